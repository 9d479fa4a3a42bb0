"""The course's bracket (Dyck-1) process: a random walk of depth that stops on returning to zero."""
from __future__ import annotations

import math
import random

import numpy as np

from ..errors import UserError
from .base import Entropy, Language


class Brackets(Language):
    """Start with '(' at depth 1; while depth > 0 append '(' with probability p, else ')'.

    p < 1/2 makes the walk return to zero with probability one and keeps the expected length finite."""

    name = "brackets"
    alphabet = ("(", ")")

    def __init__(self, p: float = 7 / 16):
        if not 0.0 < p < 0.5:
            raise UserError(f"brackets:p={p} is out of range; p must be in (0, 0.5) so strings end")
        self.p = float(p)

    @property
    def spec(self) -> str:
        return f"brackets:p={self.p!r}"

    def sample(self, rng: random.Random) -> str:
        depth, out = 1, ["("]
        while depth > 0:
            if rng.random() < self.p:
                out.append("(")
                depth += 1
            else:
                out.append(")")
                depth -= 1
        return "".join(out)

    @staticmethod
    def _depths_ok(s: str) -> bool:
        """Non-empty, only brackets, depth positive until the last symbol, zero at the end."""
        if not s or s[0] != "(":
            return False
        depth = 0
        for i, c in enumerate(s):
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            else:
                return False
            if depth == 0 and i != len(s) - 1:
                return False
        return depth == 0

    def log_prob(self, s: str) -> float:
        if not self._depths_ok(s):
            return -math.inf
        m = len(s) // 2  # the first '(' is not drawn
        return (m - 1) * math.log(self.p) + m * math.log1p(-self.p)

    def next_symbols(self, prefix: str) -> tuple[frozenset[str], bool]:
        return self.prefix_table(prefix)[-1]

    def prefix_table(self, s: str):
        out = [(frozenset("("), False)]
        depth, dead = 0, False
        for i, c in enumerate(s):
            if dead or c not in "()" or (depth == 0 and i > 0):
                dead = True
            else:
                depth += 1 if c == "(" else -1
                dead = depth < 0
            if dead:
                out.append((frozenset(), False))
            elif depth == 0:
                out.append((frozenset(), True))
            else:
                out.append((frozenset("()"), False))
        return out

    def entropy(self) -> Entropy:
        p, q = self.p, 1.0 - self.p
        steps = 1.0 / (q - p)  # expected hitting time of 0 from depth 1
        em = (steps + 1.0) / 2.0  # closing brackets = m; opening after the first = m - 1
        bits = -((em - 1.0) * math.log2(p) + em * math.log2(q))
        return Entropy(bits, 1.0 + steps + 1.0, exact=True)

    def by_length(self, max_len: int) -> list[dict]:
        """Length 2m: the Catalan(m - 1) strings '(' w ')' (w a Dyck word), each p^(m-1) q^m: uniform."""
        out = []
        lp, lq = math.log(self.p), math.log1p(-self.p)
        for m in range(1, max_len // 2 + 1):
            log_cat = math.lgamma(2 * m - 1) - math.lgamma(m) - math.lgamma(m + 1)
            out.append({"length": 2 * m, "p_length": math.exp(log_cat + (m - 1) * lp + m * lq),
                        "entropy_bits": log_cat / math.log(2), "exact": True, "stderr": 0.0})
        return out

    def sample_length(self, rng: random.Random, n: int) -> str:
        """'(' + a uniform Dyck word of n - 2 symbols + ')': each step up with the share of the
        completions that go up (ballot numbers, exact integers)."""
        from ..errors import UserError

        if n < 2 or n % 2:
            raise UserError(f"brackets has no strings of length {n} (only even lengths >= 2)")

        def paths(h: int, r: int) -> int:  # walks of r steps from height h to 0, never below 0
            if h < 0 or h > r or (r - h) % 2:
                return 0
            k = (r - h) // 2
            return math.comb(r, k) - (math.comb(r, k - 1) if k >= 1 else 0)

        out, h, r = ["("], 0, n - 2
        while r:
            up = paths(h + 1, r - 1)
            total = up + paths(h - 1, r - 1)
            if rng.random() * total < up:
                out.append("(")
                h += 1
            else:
                out.append(")")
                h -= 1
            r -= 1
        return "".join(out) + ")"

    def length_pmf(self, max_len: int):
        pmf = np.zeros(max_len + 1)
        lp, lq = math.log(self.p), math.log1p(-self.p)
        for m in range(1, max_len // 2 + 1):
            if 2 * m >= max_len:
                break
            # Catalan(m - 1) strings of length 2m, each p^(m-1) q^m.
            log_cat = math.lgamma(2 * m - 1) - math.lgamma(m) - math.lgamma(m + 1)
            pmf[2 * m] = math.exp(log_cat + (m - 1) * lp + m * lq)
        pmf[max_len] += max(0.0, 1.0 - pmf.sum())
        return pmf, True
