"""The Language interface: a generating process whose truth (membership, exact probabilities, legal
continuations, entropy) is known, so models can be measured against it instead of eyeballed."""
from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

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
    # Not exact: the derivation entropy per token, which the string entropy never exceeds (ambiguous
    # grammars), and the share of sampled strings scored by a bound instead of exactly (very long ones).
    upper_bits_per_token: float | None = None
    bound_share: float = 0.0

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
            **({"upper_bits_per_token": self.upper_bits_per_token} if self.upper_bits_per_token is not None else {}),
            **({"bound_share": self.bound_share} if self.bound_share else {}),
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

    # ---- truth by length (issue "Does it generalise?"): length = symbols, the end marker not counted
    def by_length(self, max_len: int) -> list[dict]:
        """[{length, p_length, entropy_bits, exact, stderr}] for lengths 0..max_len with P > 0:
        P(|s| = n) and H(S | |S| = n) in bits. Languages override this with exact forms; the default
        estimates both from samples."""
        strings = self.strings(50_000, seed=987_654_321)
        by: dict[int, list[str]] = {}
        for s in strings:
            by.setdefault(len(self.tokens(s)), []).append(s)
        out = []
        for n in range(max_len + 1):
            got = by.get(n, [])
            if not got:
                continue
            p = len(got) / len(strings)
            bits = -self.log2_probs(got)
            h = float(bits.mean() + math.log2(p))
            se = float(bits.std(ddof=1) / math.sqrt(len(got))) if len(got) > 1 else float("inf")
            out.append({"length": n, "p_length": p, "entropy_bits": max(h, 0.0), "exact": False, "stderr": se})
        return out

    def sample_length(self, rng: random.Random, n: int) -> str:
        """A string drawn from P(s | |s| = n); the default draws until one has that length."""
        for _ in range(1_000_000):
            s = self.sample(rng)
            if len(self.tokens(s)) == n:
                return s
        raise UserError(f"{self.spec}: no string of length {n} in a million draws; choose other lengths")

    def length_pmf(self, max_len: int) -> tuple[np.ndarray, bool]:
        """P(len = l) for l = 0..max_len (the last entry takes the tail beyond) and whether exact.

        The default is a fixed-seed Monte-Carlo estimate; languages with a closed form override it."""
        counts = np.zeros(max_len + 1)
        for s in self.strings(50_000, seed=987_654_321):
            counts[min(len(self.tokens(s)), max_len)] += 1
        return counts / counts.sum(), False


# Symbols a Monte-Carlo estimate may sample and score (about a minute of pure-Python truth): long
# strings get fewer samples, and the standard error says what that costs.
MC_SYMBOLS = 4_000_000
MIN_PER_STRATUM = 2_000  # strings per stratum of a stratified estimate, however rare the stratum


def monte_carlo_n(lang: "Language", n: int) -> int:
    """n, or fewer samples when the language's strings are long (at least 1,000)."""
    moments = getattr(lang, "length_moments", None)
    if moments is None:
        return n
    mean = moments()[0] + 1.0
    return int(max(1_000, min(n, MC_SYMBOLS // mean)))


class Progress:
    """A line on stderr at most every 10 s, once a computation has run 10 s: long truth computations
    (floors of user languages) never look hung."""

    def __init__(self, what: str, total: int, every: float = 10.0):
        import time

        self.what, self.total, self.every = what, total, every
        self.t0 = self.last = time.time()

    def __call__(self, done: int) -> None:
        import sys
        import time

        now = time.time()
        if now - self.t0 >= self.every and now - self.last >= self.every:
            print(f"  {self.what}: {done:,}/{self.total:,} ({now - self.t0:.0f}s)", file=sys.stderr, flush=True)
            self.last = now


def entropy_by_monte_carlo(lang: Language, n: int = 20_000, seed: int = 12345) -> Entropy:
    """Monte-Carlo entropy from exact log-probs, with the standard error of the per-token ratio."""
    n = monte_carlo_n(lang, n)
    strings = lang.strings(n, seed)
    tick = Progress("the entropy floor: strings scored", n)
    bits = np.empty(n)
    for i, s in enumerate(strings):
        bits[i] = -lang.log2_prob(s)
        if i % 256 == 0:
            tick(i)
    toks = np.array([len(lang.tokens(s)) + 1 for s in strings], dtype=float)
    hb, ht = bits.mean(), toks.mean()
    # Delta method for the ratio of means.
    r = hb / ht
    se = np.sqrt(np.var(bits - r * toks, ddof=1) / n) / ht
    return Entropy(float(hb), float(ht), exact=False, stderr_bits_per_token=float(se))


# Beyond these, truth and training would run for hours or exhaust memory: a character LSTM over
# strings this long is not what seqgen_jax is for, and sampling the floor's 20,000 strings would not end.
MAX_MEAN_LENGTH = 10_000
MAX_SD_LENGTH = 100_000


def check_lengths(where: str, mean: float, sd: float) -> None:
    """Refuse a language whose strings are too long on average, or vary too wildly, in one line with
    the figures (computed exactly from the process, before anything is sampled)."""
    if not math.isfinite(mean) or mean > MAX_MEAN_LENGTH:
        raise UserError(f"{where}: its strings are {mean:,.0f} symbols long on average, beyond the "
                        f"{MAX_MEAN_LENGTH:,} seqgen_jax handles; make ending more likely")
    if not math.isfinite(sd) or sd > MAX_SD_LENGTH:
        raise UserError(f"{where}: its string lengths vary wildly (mean {mean:,.0f}, standard deviation {sd:,.0f} "
                        f"symbols; a recursion close to critical), so some strings would be millions of symbols "
                        "long; lower the probabilities of recursive rules or arcs")


def symbol_problem(sym: str) -> str | None:
    """Why a user's terminal or arc symbol cannot be a token, or None: it would be confused with the
    vocabulary's specials or break the one-string-per-line files `data` writes and `score` reads."""
    import unicodedata

    if sym in (".pad", ".start", ".end", ".unk"):
        return "is spelled like one of seqgen_jax's special tokens (.pad .start .end .unk); rename it"
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in sym):
        return "contains whitespace or a control character; symbols are single visible tokens"
    return None


ENUM_BUDGET = 1 << 16  # strings of one length enumerated for an exact conditional entropy
MC_PER_LENGTH = 400  # strings drawn at one length for a Monte-Carlo conditional entropy


def entropy_at_length(lang: "Language", n: int, p_n: float, sample_at, rng: random.Random) -> tuple[float, bool, float]:
    """(H(S | |S| = n) in bits, exact, stderr) from exact string probabilities: every string of the
    length when there are few enough (the language lists its own, `strings_of_length`, else all
    strings over the alphabet), else strings drawn at that length (`sample_at`)."""
    import itertools

    strings = None
    listing = getattr(lang, "strings_of_length", None)
    if listing is not None:
        strings = listing(n, ENUM_BUDGET)  # the language's own strings of that length, or None if too many
    elif len(lang.alphabet) ** n <= ENUM_BUDGET:
        strings = [lang.render(t) for t in itertools.product(lang.alphabet, repeat=n)]
    if strings is not None:
        lp = lang.log2_probs(strings)
        p = np.exp2(lp[np.isfinite(lp)]) / p_n
        return float(max(0.0, -(p * np.log2(p)).sum())), True, 0.0
    bits = -lang.log2_probs([sample_at(rng, n) for _ in range(MC_PER_LENGTH)])
    h = float(bits.mean() + math.log2(p_n))
    return max(h, 0.0), False, float(bits.std(ddof=1) / math.sqrt(len(bits)))


def logsumexp(values) -> float:
    values = [v for v in values if v > -math.inf]
    if not values:
        return -math.inf
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))
