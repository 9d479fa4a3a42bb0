"""The Language interface: a generating process whose truth (membership, exact probabilities, legal
continuations, entropy) is known, so models can be measured against it instead of eyeballed."""
from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)  # nats per bit: the one definition every module imports
LOG2E = 1.0 / LN2


@dataclass(frozen=True)
class Entropy:
    """Entropy of the process per string and the floor it sets on cross-entropy per predicted token.

    A model is given the start marker and predicts every symbol plus the end marker, so a string of
    length L costs L + 1 predictions."""

    bits_per_string: float
    tokens_per_string: float
    exact: bool
    stderr_bits_per_token: float = 0.0

    @property
    def bits_per_token(self) -> float:
        return self.bits_per_string / self.tokens_per_string

    def to_json(self) -> dict:
        return {
            "entropy_bits_per_string": self.bits_per_string,
            "tokens_per_string": self.tokens_per_string,
            "entropy_bits_per_token": self.bits_per_token,
            "exact": self.exact,
            "stderr_bits_per_token": self.stderr_bits_per_token,
        }


class Language(ABC):
    """A string distribution with known truth. Symbols are single characters (`char`), or tokens
    written with single spaces between them when any symbol is longer (user grammars over words)."""

    name: str
    alphabet: tuple[str, ...]
    char: bool = True

    def tokens(self, s: str) -> list[str]:
        if self.char:
            return list(s)
        return s.split(" ") if s else []

    def render(self, tokens) -> str:
        return ("" if self.char else " ").join(tokens)

    @property
    @abstractmethod
    def spec(self) -> str:
        """The dataset spec that rebuilds this language, e.g. `brackets:p=0.4375`."""

    @abstractmethod
    def sample(self, rng: random.Random) -> str:
        """One string; all randomness comes from `rng` (course draw order)."""

    @abstractmethod
    def log_prob(self, s: str) -> float:
        """Exact natural-log probability of `s`, `-inf` outside the support."""

    @abstractmethod
    def next_symbols(self, prefix: str) -> tuple[frozenset[str], bool]:
        """Symbols that may follow `prefix`, and whether the string may end after it."""

    @abstractmethod
    def entropy(self) -> Entropy: ...

    def accepts(self, s: str) -> bool:
        return self.log_prob(s) > -math.inf

    def log2_prob(self, s: str) -> float:
        return self.log_prob(s) * LOG2E

    def log2_probs(self, strings) -> np.ndarray:
        """Many strings at once; languages with a batched algorithm (pcfg) override it."""
        return np.array([self.log2_prob(s) for s in strings], dtype=float)

    def prefix_table(self, s: str) -> list[tuple[frozenset[str], bool]]:
        """`next_symbols` of every prefix `s[:i]`, i = 0..len(s). Subclasses make this incremental."""
        return [self.next_symbols(s[:i]) for i in range(len(s) + 1)]

    def strings(self, n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def length_pmf(self, max_len: int) -> tuple[np.ndarray, bool]:
        """P(len = l) for l = 0..max_len (the last entry takes the tail beyond) and whether exact.

        The default is a fixed-seed Monte-Carlo estimate; languages with a closed form override it."""
        counts = np.zeros(max_len + 1)
        for s in self.strings(50_000, seed=987_654_321):
            counts[min(len(self.tokens(s)), max_len)] += 1
        return counts / counts.sum(), False


def entropy_by_monte_carlo(lang: Language, n: int = 20_000, seed: int = 12345) -> Entropy:
    """Monte-Carlo entropy from exact log-probs, with the standard error of the per-token ratio."""
    strings = lang.strings(n, seed)
    bits = np.array([-lang.log2_prob(s) for s in strings])
    toks = np.array([len(lang.tokens(s)) + 1 for s in strings], dtype=float)
    hb, ht = bits.mean(), toks.mean()
    # Delta method for the ratio of means.
    r = hb / ht
    se = np.sqrt(np.var(bits - r * toks, ddof=1) / n) / ht
    return Entropy(float(hb), float(ht), exact=False, stderr_bits_per_token=float(se))


def logsumexp(values) -> float:
    values = [v for v in values if v > -math.inf]
    if not values:
        return -math.inf
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))
