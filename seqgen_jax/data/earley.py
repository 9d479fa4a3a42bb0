"""An Earley recogniser over tokens for grammars without empty rules (the toy grammar, `pcfg:` files).

It answers what the inside algorithm cannot cheaply: which tokens may follow a prefix, and whether a
string fails already at its k-th token (so a long invalid line is rejected after k steps instead of
paying the cubic inside pass). Items are (rule, dot, origin); rule 0 is the augmented `^ -> START`.
"""
from __future__ import annotations

Chart = list  # list[frozenset[tuple[int, int, int]]], one item set per token read


class OverBudget(Exception):
    """The recogniser did more work than it was allowed (a long string of a highly ambiguous grammar,
    where Earley in Python is cubic): the caller decides another way."""


class Earley:
    def __init__(self, rules: list[tuple[str, tuple[str, ...]]], start: str):
        self.rules = [("^", (start,))] + list(rules)
        self.nonterminals = {lhs for lhs, _ in rules}
        self.by_lhs = {nt: [i for i, r in enumerate(self.rules) if r[0] == nt] for nt in self.nonterminals}

    def _closure(self, items: set, chart: Chart, budget: list | None = None) -> frozenset:
        agenda, done, pos = list(items), set(items), len(chart)
        while agenda:
            if budget is not None:
                budget[0] -= 1
                if budget[0] < 0:
                    raise OverBudget
            r, dot, origin = agenda.pop()
            lhs, rhs = self.rules[r]
            if dot < len(rhs):
                nxt = rhs[dot]
                if nxt in self.nonterminals:
                    for r2 in self.by_lhs[nxt]:
                        it = (r2, 0, pos)
                        if it not in done:
                            done.add(it)
                            agenda.append(it)
                    # No empty rules, so no completion of `nxt` at this position is pending.
            else:
                parents = chart[origin] if origin < pos else done
                for (pr, pdot, porigin) in list(parents):
                    prhs = self.rules[pr][1]
                    if pdot < len(prhs) and prhs[pdot] == lhs:
                        it = (pr, pdot + 1, porigin)
                        if it not in done:
                            done.add(it)
                            agenda.append(it)
        return frozenset(done)

    def initial(self) -> Chart:
        return [self._closure({(0, 0, 0)}, [])]

    def advance(self, chart: Chart, token: str, budget: list | None = None, in_place: bool = False) -> Chart | None:
        """The chart after one more token (a new list unless `in_place`), or None when no parse
        continues with it."""
        scanned = {(r, d + 1, o) for (r, d, o) in chart[-1]
                   if d < len(self.rules[r][1]) and self.rules[r][1][d] == token}
        if not scanned:
            return None
        nxt = self._closure(scanned, chart, budget)
        if in_place:
            chart.append(nxt)
            return chart
        return chart + [nxt]

    def expected(self, chart: Chart) -> set[str]:
        """Terminals that may come next."""
        out = set()
        for (r, d, _) in chart[-1]:
            rhs = self.rules[r][1]
            if d < len(rhs) and rhs[d] not in self.nonterminals:
                out.add(rhs[d])
        return out

    @staticmethod
    def complete(chart: Chart) -> bool:
        return (0, 1, 0) in chart[-1]

    def recognise(self, tokens, budget: int | None = None) -> tuple[bool, int]:
        """(whether the whole sequence is a sentence, how many tokens a parse survived); raises
        OverBudget after `budget` item operations."""
        chart = self.initial()
        b = None if budget is None else [budget]
        for k, t in enumerate(tokens):
            chart = self.advance(chart, t, b, in_place=True)
            if chart is None:
                return False, k
        return self.complete(chart), len(tokens)

    def prefix_table(self, tokens) -> list[tuple[frozenset[str], bool]]:
        """(next terminals, may end) after every prefix tokens[:i], i = 0..len(tokens)."""
        out, chart = [], self.initial()
        for i in range(len(tokens) + 1):
            if chart is None:
                out.append((frozenset(), False))
                continue
            out.append((frozenset(self.expected(chart)), self.complete(chart)))
            if i < len(tokens):
                chart = self.advance(chart, tokens[i], in_place=True)
        return out
