"""The course's toy English-like grammar: a probabilistic context-free grammar over words.

Sampling follows the course exactly (leftmost nonterminal found by regex, `rng.choice` of its rules).
Probabilities sum over all derivations (the grammar is ambiguous: an adverb may attach to any `_s`
on the right spine of a `_con` chain); legal continuations come from an Earley recogniser."""
from __future__ import annotations

import math
import random
import re
from functools import lru_cache

import numpy as np

from .base import Entropy, Language, logsumexp
from .earley import Earley
from .lengths import _NT, GrammarTables, TableLengths

RULES: dict[str, list[str]] = {
    "_s": ["_s _adv", "_np _vp", "_np _vp _prep _np", "_np _vp ( _prep _np )", "_np _vp _con _s",
           "_np _vp ( _con _s )"],
    "_adv": ["briefly", "quickly", "impatiently"],
    "_np": ["a _noun", "the _noun", "a _adj _noun", "the _adj _noun"],
    "_prep": ["on", "with", "to"],
    "_con": ["while", "but"],
    "_noun": ["mouse", "bunny", "cat", "dog", "man", "woman", "person"],
    "_vp": ["walked", "walks", "ran", "runs", "goes", "went"],
    "_adj": ["short", "quick", "busy", "nice", "gorgeous"],
}
_NONTERMINAL = re.compile("_[a-z]*")
_START = "_s"


class Toy(TableLengths, Language):
    name = "toy"

    def __init__(self):
        self.rules = {nt: [tuple(r.split(" ")) for r in rhss] for nt, rhss in RULES.items()}
        self.words = sorted({w for rhss in self.rules.values() for r in rhss for w in r
                             if w not in self.rules})
        self.alphabet = tuple(sorted(set("".join(self.words)) | {" "}))
        self._min_words = self._min_yield()
        self._earley = Earley([(nt, rhs) for nt, rhss in self.rules.items() for rhs in rhss], _START)
        self._cache: dict[str, tuple[float, int]] = {}

    @property
    def spec(self) -> str:
        return "toy"

    # ---- sampling (course-exact) ----
    def sample(self, rng: random.Random) -> str:
        sent = _START
        while True:
            m = _NONTERMINAL.search(sent)
            if m is None:
                return sent
            a, b = m.span()
            sent = sent[:a] + rng.choice(RULES[sent[a:b]]) + sent[b:]

    # ---- exact probabilities (inside algorithm over words) ----
    def _min_yield(self) -> dict[str, int]:
        mins = {nt: 10**9 for nt in self.rules}
        changed = True
        while changed:
            changed = False
            for nt, rhss in self.rules.items():
                best = min(sum(mins.get(x, 1) for x in r) for r in rhss)
                if best < mins[nt]:
                    mins[nt], changed = best, True
        return mins

    def _words_of(self, s: str):
        words = s.split(" ")
        if not s or any(w == "" for w in words):
            return None
        return tuple(words)

    def inside(self, s: str) -> tuple[float, int]:
        """(log probability summed over derivations, number of derivations) of `s`."""
        hit = self._cache.get(s)
        if hit is None:
            if len(self._cache) > 200_000:  # short strings repeat a lot; keep memory bounded
                self._cache.clear()
            hit = self._cache[s] = self._inside(s)
        return hit

    def _inside(self, s: str) -> tuple[float, int]:
        words = self._words_of(s)
        if words is None or any(w not in self.words for w in words):
            return -math.inf, 0
        # The inside algorithm is cubic in the length; the Earley recogniser rejects an invalid string
        # at its first wrong word, so a long invalid line costs almost nothing.
        if not self._earley.recognise(words)[0]:
            return -math.inf, 0
        rules, mins = self.rules, self._min_words

        @lru_cache(maxsize=None)
        def span(sym: str, i: int, j: int) -> tuple[float, int]:
            if sym not in rules:
                return (0.0, 1) if j == i + 1 and words[i] == sym else (-math.inf, 0)
            if j - i < mins[sym]:
                return -math.inf, 0
            lp = -math.log(len(rules[sym]))
            parts, count = [], 0
            for rhs in rules[sym]:
                v, c = seq(rhs, 0, i, j)
                if c:
                    parts.append(lp + v)
                    count += c
            return logsumexp(parts), count

        @lru_cache(maxsize=None)
        def seq(rhs: tuple, k: int, i: int, j: int) -> tuple[float, int]:
            if k == len(rhs) - 1:
                return span(rhs[k], i, j)
            rest = sum(mins.get(x, 1) for x in rhs[k + 1:])
            parts, count = [], 0
            for m in range(i + mins.get(rhs[k], 1), j - rest + 1):
                a, ca = span(rhs[k], i, m)
                if not ca:
                    continue
                b, cb = seq(rhs, k + 1, m, j)
                if cb:
                    parts.append(a + b)
                    count += ca * cb
            return logsumexp(parts), count

        return span(_START, 0, len(words))

    def log_prob(self, s: str) -> float:
        return self.inside(s)[0]

    # ---- legal continuations (Earley over words) ----
    def _char_options(self, chart, partial: str) -> tuple[frozenset[str], bool]:
        chars, can_end = set(), False
        e = self._earley
        for w in e.expected(chart):
            if len(w) > len(partial) and w.startswith(partial):
                chars.add(w[len(partial)])
            elif w == partial:
                after = e.advance(chart, w)
                if e.expected(after):
                    chars.add(" ")
                can_end = can_end or e.complete(after)
        return frozenset(chars), can_end

    def next_symbols(self, prefix: str) -> tuple[frozenset[str], bool]:
        return self.prefix_table(prefix)[-1]

    def prefix_table(self, s: str):
        out = []
        chart = self._earley.initial()
        start = 0  # where the current (partial) word starts
        for i in range(len(s) + 1):
            if chart is None:
                out.append((frozenset(), False))
                continue
            out.append(self._char_options(chart, s[start:i]))
            if i < len(s) and s[i] == " ":
                word = s[start:i]
                chart = self._earley.advance(chart, word) if word else None
                start = i + 1
        return out

    # ---- truth by length (in characters, the model's symbols) ----
    def _length_tables(self, N: int):
        """Length tables of the grammar over characters: each word its letters, a space between the
        items of a rule (every item is at least one word, so that is the string's spacing)."""
        if getattr(self, "_lt", None) is None or self._lt.N < N:
            rules = []
            for nt, rhss in self.rules.items():
                for rhs in rhss:
                    items = []
                    for j, x in enumerate(rhs):
                        if j:
                            items.append(" ")
                        items += [_NT + x] if x in self.rules else list(x)
                    rules.append((_NT + nt, tuple(items), 1.0 / len(rhss)))
            self._lt = GrammarTables(rules, _NT + _START, max(N, 2 * getattr(getattr(self, "_lt", None), "N", 0)))
        return self._lt

    # ---- entropy ----
    def _expected_counts(self) -> dict[str, float]:
        """Expected number of occurrences of every symbol per string: c = e_start + c M."""
        syms = list(self.rules) + self.words
        idx = {x: i for i, x in enumerate(syms)}
        M = np.zeros((len(syms), len(syms)))
        for nt, rhss in self.rules.items():
            for rhs in rhss:
                for x in rhs:
                    M[idx[nt], idx[x]] += 1.0 / len(rhss)
        e = np.zeros(len(syms))
        e[idx[_START]] = 1.0
        c = np.linalg.solve((np.eye(len(syms)) - M).T, e)
        return {x: float(c[idx[x]]) for x in syms}

    def derivation_entropy_bits(self) -> float:
        c = self._expected_counts()
        return sum(c[nt] * math.log2(len(rhss)) for nt, rhss in self.rules.items())

    def ambiguity_bits(self) -> float:
        """E[log2 #derivations(s)]: all derivations of a string are equally likely here, so this is
        the derivation entropy lost in the string, H(D | S).

        Ambiguity comes only from adverbs: `_s -> _s _adv` applied k_i times on each `_s` of a chain
        linked by unbracketed `_con _s` puts all the chain's adverbs at its end, so a chain of m
        `_s` with K adverbs in total has C(K + m - 1, m - 1) derivations. m is geometric (a core
        continues the chain with probability 1/5), K given m negative binomial (each `_s` recurses
        with probability 1/6), and chains start at the root and at every `( _con _s )`, 4/3 chains
        per string on average, independently of their (m, K). The series converges geometrically."""
        a = 1.0 / len(self.rules["_s"])  # recursion probability of `_s`
        cores = [r for r in self.rules["_s"] if r[0] != "_s"]
        cont = sum(1 for r in cores if r[-1] == "_s" and "(" not in r) / len(cores)
        nested = sum(1 for r in cores if r[-1] == ")" and "_s" in r) / len(cores)
        n_cores = self._expected_counts()["_s"] * (1 - a)
        chains = 1.0 + n_cores * nested
        total = 0.0
        for m in range(1, 200):
            pm = cont ** (m - 1) * (1 - cont)
            if pm < 1e-18:
                break
            for k in range(0, 2000):
                log_c = math.lgamma(k + m) - math.lgamma(k + 1) - math.lgamma(m)
                pk = math.exp(log_c + m * math.log1p(-a) + k * math.log(a))
                if k > 10 and pk < 1e-18:
                    break
                total += pm * pk * log_c / math.log(2)
        return chains * total

    def entropy(self) -> Entropy:
        c = self._expected_counts()
        tokens = sum(c[w] * (len(w) + 1) for w in self.words)  # each word's letters + a space or end
        return Entropy(self.derivation_entropy_bits() - self.ambiguity_bits(), tokens, exact=True)
