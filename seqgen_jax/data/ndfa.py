"""The course's NDFA language `s(abc!)*s | s(uvw!)*s | s(klm!)*s`."""
from __future__ import annotations

import math
import random

import numpy as np

from ..errors import UserError
from .base import Entropy, Language

WORDS = ("abc!", "uvw!", "klm!")


class NDFA(Language):
    """Pick a word uniformly, then repeat it k times with P(k) = p (1-p)^k; output `'s' + word*k + 's'`.

    `p` is the stop probability (the course's 1/4)."""

    name = "ndfa"

    def __init__(self, p: float = 0.25):
        if not 0.0 < p < 1.0:
            raise UserError(f"ndfa:p={p} is out of range; the stop probability p must be in (0, 1)")
        self.p = float(p)
        self.alphabet = tuple(sorted(set("s" + "".join(WORDS))))

    @property
    def spec(self) -> str:
        return f"ndfa:p={self.p!r}"

    def sample(self, rng: random.Random) -> str:
        word = rng.choice(list(WORDS))
        s = ""
        while True:
            if rng.random() < self.p:
                return "s" + s + "s"
            s += word

    def _parse(self, s: str):
        """(word or None, k) for strings in the support, else None."""
        if len(s) < 2 or s[0] != "s" or s[-1] != "s":
            return None
        body = s[1:-1]
        if body == "":
            return (None, 0)
        if len(body) % 4:
            return None
        word = body[:4]
        k = len(body) // 4
        if word not in WORDS or body != word * k:
            return None
        return (word, k)

    def log_prob(self, s: str) -> float:
        parsed = self._parse(s)
        if parsed is None:
            return -math.inf
        word, k = parsed
        if word is None:  # every word gives 'ss'
            return math.log(self.p)
        return -math.log(3) + k * math.log1p(-self.p) + math.log(self.p)

    def next_symbols(self, prefix: str) -> tuple[frozenset[str], bool]:
        if prefix == "":
            return frozenset("s"), False
        if prefix[0] != "s":
            return frozenset(), False
        if len(prefix) >= 2 and prefix[-1] == "s":
            return frozenset(), self._parse(prefix) is not None
        body = prefix[1:]
        if body == "":
            return frozenset("s" + "".join(w[0] for w in WORDS)), False
        word = next((w for w in WORDS if w[0] == body[0]), None)
        if word is None:
            return frozenset(), False
        k, r = divmod(len(body), 4)
        if body != (word * (k + 1))[: len(body)]:
            return frozenset(), False
        if r == 0:
            return frozenset({"s", word[0]}), False
        return frozenset(word[r]), False

    def entropy(self) -> Entropy:
        p, q = self.p, 1.0 - self.p
        ek = q / p
        # 'ss' has probability p; each (word, k>=1) has (1/3) q^k p.
        bits = -p * math.log2(p) + q * (math.log2(3) - math.log2(p)) - ek * math.log2(q)
        return Entropy(bits, 3.0 + 4.0 * ek, exact=True)

    def by_length(self, max_len: int) -> list[dict]:
        """'ss' (length 2), else 2 + 4k symbols: the three words repeated k times, equally likely."""
        out = [{"length": 2, "p_length": self.p, "entropy_bits": 0.0, "exact": True, "stderr": 0.0}] if max_len >= 2 else []
        k = 1
        while 2 + 4 * k <= max_len:
            out.append({"length": 2 + 4 * k, "p_length": self.p * (1 - self.p) ** k, "entropy_bits": math.log2(3),
                        "exact": True, "stderr": 0.0})
            k += 1
        return out

    def sample_length(self, rng: random.Random, n: int) -> str:
        from ..errors import UserError

        if n < 2 or (n - 2) % 4:
            raise UserError(f"ndfa has no strings of length {n} (only 2 + 4k)")
        return "s" + rng.choice(list(WORDS)) * ((n - 2) // 4) + "s"

    def length_pmf(self, max_len: int):
        pmf = np.zeros(max_len + 1)
        k = 0
        while 2 + 4 * k < max_len:
            pmf[2 + 4 * k] = self.p * (1 - self.p) ** k
            k += 1
        pmf[max_len] += max(0.0, 1.0 - pmf.sum())
        return pmf, True
