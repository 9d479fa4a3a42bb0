"""Truth by length for context-free grammars: P(|s| = n), the derivation entropy given the length,
an exact sampler of strings of one length, and a proof of unambiguity (so the derivation entropy is
the string entropy) where one can be given.

Length tables (`GrammarTables`): for every nonterminal A and n <= N, Z_A(n) = P(A yields exactly n
terminals) and W_A(n) = sum over those derivations d of P(d) * -ln P(d). Rules are convolutions of
their items' tables (an item yields at least one terminal: there are no empty rules), unit rules
A -> B a linear system per length. Then H(D | |D| = n) = W_S(n) / Z_S(n) + ln Z_S(n).

Unambiguity (`ll1_after_left_factoring`): left-factor the grammar (a derivation-preserving rewrite),
then check LL(1); an LL(1) grammar has one leftmost derivation per string. A sufficient condition
only: `E -> T '+' E | T` passes, `B -> B B | 'c'` (ambiguous) and left-recursive grammars do not.
"""
from __future__ import annotations

import math
import random

import numpy as np

_NT = "\x00"


def is_nt(x: str) -> bool:
    return x.startswith(_NT)


class GrammarTables:
    """Z and W tables up to length N for rules [(lhs, rhs, p)] (nonterminals prefixed by `_NT`)."""

    def __init__(self, rules, start: str, N: int):
        self.rules = [(l, tuple(r), float(p)) for l, r, p in rules if p > 0]
        self.start, self.N = start, N
        self.nts = sorted({l for l, _, _ in self.rules} | {start})
        self.idx = {a: i for i, a in enumerate(self.nts)}
        K = len(self.nts)
        self.unit = np.zeros((K, K))  # unit[A, B] = p(A -> B)
        self.unit_ent = np.zeros((K, K))  # p * -ln p
        self.long = []  # (lhs index, rhs, p) of rules that are not unit rules
        for l, r, p in self.rules:
            if len(r) == 1 and is_nt(r[0]):
                self.unit[self.idx[l], self.idx[r[0]]] += p
                self.unit_ent[self.idx[l], self.idx[r[0]]] += -p * math.log(p)
            else:
                self.long.append((self.idx[l], r, p))
        self.inv = np.linalg.inv(np.eye(K) - self.unit)
        self.Z = np.zeros((K, N + 1))
        self.W = np.zeros((K, N + 1))
        # Per long rule, per prefix length j (items 0..j-1): (P, Q) arrays over lengths.
        self.prefix = [[None] * (len(r) + 1) for _, r, _ in self.long]
        self._fill()

    def _item(self, x: str):
        if is_nt(x):
            i = self.idx[x]
            return self.Z[i], self.W[i]
        z = np.zeros(self.N + 1)
        z[1] = 1.0
        return z, np.zeros(self.N + 1)

    def _fill(self) -> None:
        """Length by length. Prefix j >= 2 of a rule at n needs its items' tables below n only (every
        item yields at least one terminal); prefix 1 is its first item's table, set once that is known."""
        N = self.N
        for k, (_, r, _) in enumerate(self.long):
            for j in range(len(r) + 1):
                self.prefix[k][j] = (np.zeros(N + 1), np.zeros(N + 1))
            if not is_nt(r[0]):
                self.prefix[k][1][0][1] = 1.0
        for n in range(1, N + 1):
            raw_z = np.zeros(len(self.nts))
            raw_w = np.zeros(len(self.nts))
            m = np.arange(1, n)
            for k, (a, r, p) in enumerate(self.long):
                pre = self.prefix[k]
                for j in range(2, len(r) + 1):
                    zx, wx = self._item(r[j - 1])
                    pz, pw = pre[j - 1]
                    pre[j][0][n] = float(np.dot(pz[n - m], zx[m]))
                    pre[j][1][n] = float(np.dot(pw[n - m], zx[m]) + np.dot(pz[n - m], wx[m]))
                z, w = pre[len(r)][0][n], pre[len(r)][1][n]
                raw_z[a] += p * z
                raw_w[a] += p * w - p * math.log(p) * z
            self.Z[:, n] = self.inv @ raw_z
            self.W[:, n] = self.inv @ (raw_w + self.unit_ent @ self.Z[:, n])
            for k, (_, r, _) in enumerate(self.long):
                if is_nt(r[0]):
                    i = self.idx[r[0]]
                    self.prefix[k][1][0][n], self.prefix[k][1][1][n] = self.Z[i, n], self.W[i, n]

    # ---- per length
    def p_length(self, n: int) -> float:
        return float(self.Z[self.idx[self.start], n]) if n <= self.N else 0.0

    def derivation_entropy_bits(self, n: int) -> float:
        """H(D | |D| = n) in bits (0 where the length is impossible)."""
        z = self.p_length(n)
        if z <= 0:
            return 0.0
        w = float(self.W[self.idx[self.start], n])
        return max(0.0, (w / z + math.log(z)) / math.log(2))

    # ---- sampling at a length
    def sample(self, rng: random.Random, n: int) -> list[str]:
        """The terminals of a derivation drawn from P(d | |d| = n) (so a string from P(s | |s| = n))."""
        if self.p_length(n) <= 0:
            raise ValueError(f"no string of length {n}")
        out: list[str] = []
        self._expand(rng, self.start, n, out)
        return out

    def _expand(self, rng: random.Random, a: str, n: int, out: list[str]) -> None:
        ia = self.idx[a]
        while True:
            # Choose among a's rules in proportion to p * P(rule yields n); a unit rule moves to its
            # target at the same length.
            weights, choices = [], []
            for k, (l, r, p) in enumerate(self.long):
                if l == ia:
                    weights.append(p * self.prefix[k][len(r)][0][n])
                    choices.append(("long", k))
            for jb in np.flatnonzero(self.unit[ia]):
                weights.append(self.unit[ia, jb] * self.Z[jb, n])
                choices.append(("unit", jb))
            kind, k = choices[_pick(rng, weights)]
            if kind == "unit":
                ia = int(k)
                continue
            break
        _, r, _ = self.long[k]
        # Split n over the items from the last one back: P(last = m) ∝ prefix(n - m) * item(m).
        lens = [0] * len(r)
        rest = n
        for j in range(len(r), 0, -1):
            if j == 1:
                lens[0] = rest
                break
            zx, _ = self._item(r[j - 1])
            pz = self.prefix[k][j - 1][0]
            m = np.arange(1, rest)
            w = pz[rest - m] * zx[m]
            lens[j - 1] = int(m[_pick(rng, w)])
            rest -= lens[j - 1]
        for x, m in zip(r, lens):
            if is_nt(x):
                self._expand(rng, x, m, out)
            else:
                out.append(x)


    # ---- listing the strings of a length
    def strings(self, n: int, cap: int) -> list[tuple] | None:
        """Every distinct string (token tuple) of length n the start symbol derives, or None when
        there are more than `cap` (the tables prune every impossible length)."""
        memo: dict = {}
        try:
            return sorted(self._strings(self.start, n, cap, memo, set()))
        except _TooMany:
            return None

    def _strings(self, a: str, n: int, cap: int, memo: dict, active: set) -> set:
        key = (a, n)
        if key in memo:
            return memo[key]
        if self.Z[self.idx[a], n] <= 0:
            return set()
        if key in active:  # a unit cycle at the same length adds no new strings
            return set()
        active.add(key)
        out: set = set()
        ia = self.idx[a]
        for jb in np.flatnonzero(self.unit[ia]):
            out |= self._strings(self.nts[jb], n, cap, memo, active)
        for k, (l, r, _) in enumerate(self.long):
            if l != ia or self.prefix[k][len(r)][0][n] <= 0:
                continue
            for seq in self._seq(k, r, len(r), n, cap, memo, active):
                out.add(seq)
                if len(out) > cap:
                    raise _TooMany
        active.discard(key)
        memo[key] = out
        return out

    def _seq(self, k: int, r: tuple, j: int, n: int, cap: int, memo: dict, active: set):
        """Token tuples of length n that items r[:j] yield (prefix j of long rule k)."""
        if j == 0:
            return [()] if n == 0 else []
        x = r[j - 1]
        out = []
        for m in range(1, n + 1):
            if j > 1 and self.prefix[k][j - 1][0][n - m] <= 0:
                continue
            if j == 1 and m != n:
                continue
            tails = ({(x,)} if m == 1 else set()) if not is_nt(x) else self._strings(x, m, cap, memo, active)
            if not tails:
                continue
            for head in self._seq(k, r, j - 1, n - m, cap, memo, active):
                for t in tails:
                    out.append(head + t)
                    if len(out) > 50 * cap:
                        raise _TooMany
        return out


class TableLengths:
    """Truth by length for a language whose lengths come from `GrammarTables` (the PCFGs, the toy
    grammar): it supplies `_length_tables(N)` and, where it can, `_exact_entropy_at(tables, n)`."""

    def _length_tables(self, N: int) -> GrammarTables:
        raise NotImplementedError

    def _exact_entropy_at(self, tables: GrammarTables, n: int) -> float | None:
        return None  # unknown in closed form: enumeration or Monte-Carlo (base.entropy_at_length)

    def by_length(self, max_len: int) -> list[dict]:
        from .base import entropy_at_length

        t = self._length_tables(max_len)
        rng = random.Random(4321)
        out = []
        for n in range(max_len + 1):
            z = t.p_length(n)
            if z <= 0:
                continue
            h = self._exact_entropy_at(t, n)
            h, exact, se = (h, True, 0.0) if h is not None else entropy_at_length(self, n, z, self.sample_length, rng)
            out.append({"length": n, "p_length": z, "entropy_bits": h, "exact": exact, "stderr": se})
        return out

    def length_probs(self, max_len: int) -> np.ndarray:
        t = self._length_tables(max_len)
        return np.array([t.p_length(n) for n in range(max_len + 1)])

    def sample_length(self, rng: random.Random, n: int) -> str:
        from ..errors import UserError

        t = self._length_tables(n)
        if t.p_length(n) <= 0:
            raise UserError(f"{self.spec} has no strings of length {n}")
        return self.render(t.sample(rng, n))


class _TooMany(Exception):
    pass


def _pick(rng: random.Random, weights) -> int:
    w = np.asarray(weights, float)
    c = np.cumsum(w)
    u = rng.random() * c[-1]
    return int(min(np.searchsorted(c, u, side="right"), len(w) - 1))


# ---------------------------------------------------------------- a proof of unambiguity
def ll1_after_left_factoring(rules, start: str) -> bool:
    """True if the grammar, left-factored, is LL(1) (so it is unambiguous). rules: [(lhs, rhs, ...)]."""
    g: dict[str, list[tuple]] = {}
    for rule in rules:
        g.setdefault(rule[0], []).append(tuple(rule[1]))
    fresh = 0
    changed = True
    while changed:
        changed = False
        for a in list(g):
            alts = g[a]
            by_first: dict[str, list[tuple]] = {}
            for alt in alts:
                if alt:
                    by_first.setdefault(alt[0], []).append(alt)
            for first, group in by_first.items():
                if len(group) < 2:
                    continue
                k = 1  # the group's longest common prefix
                while all(len(x) > k for x in group) and len({x[k] for x in group}) == 1:
                    k += 1
                fresh += 1
                new = f"{_NT}factor{fresh}"
                g[new] = [x[k:] for x in group]  # may hold the empty suffix (twice: a duplicate rule)
                g[a] = [x for x in alts if not (x and x[0] == first)] + [group[0][:k] + (new,)]
                changed = True
                break
            if changed:
                break
    nullable = set()
    grew = True
    while grew:
        grew = False
        for a, alts in g.items():
            if a not in nullable and any(all(x in nullable for x in alt) for alt in alts):
                nullable.add(a)
                grew = True

    def first_of(seq, first) -> set:
        out = set()
        for x in seq:
            if not is_nt(x):
                out.add(x)
                return out
            out |= first[x]
            if x not in nullable:
                return out
        return out

    first = {a: set() for a in g}
    grew = True
    while grew:
        grew = False
        for a, alts in g.items():
            for alt in alts:
                f = first_of(alt, first)
                if not f <= first[a]:
                    first[a] |= f
                    grew = True
    follow = {a: set() for a in g}
    follow[start].add("$")
    grew = True
    while grew:
        grew = False
        for a, alts in g.items():
            for alt in alts:
                for i, x in enumerate(alt):
                    if not is_nt(x):
                        continue
                    rest = alt[i + 1:]
                    f = first_of(rest, first)
                    if all(y in nullable for y in rest):
                        f = f | follow[a]
                    if not f <= follow[x]:
                        follow[x] |= f
                        grew = True
    for a, alts in g.items():
        seen: set = set()
        n_null = 0
        for alt in alts:
            f = first_of(alt, first)
            is_null = all(x in nullable for x in alt)
            if is_null:
                n_null += 1
                f = f | follow[a]
            if f & seen or n_null > 1:
                return False
            seen |= f
    return True
