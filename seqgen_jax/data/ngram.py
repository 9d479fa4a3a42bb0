"""The course's Markov baseline: an order-N character n-gram with additive (Laplace) smoothing,
fitted on a `|`-delimited stream of training strings and scored on a separately generated stream."""
from __future__ import annotations

import numpy as np

DELIM = "|"


def _codes(strings, alphabet: list[str], tokens=None) -> np.ndarray:
    table = {c: i for i, c in enumerate(alphabet)}
    if tokens is not None:  # word-level languages: tokens through a dict, a delimiter after each string
        d = table[DELIM]
        try:
            return np.fromiter((i for s in strings for i in [*(table[t] for t in tokens(s)), d]), np.int64)
        except KeyError:
            raise ValueError("a test string has a symbol the n-gram alphabet lacks") from None
    stream = "".join(s + DELIM for s in strings)
    lut = np.full(max(map(ord, alphabet)) + 1, -1, dtype=np.int64)
    for c, i in table.items():
        lut[ord(c)] = i
    raw = np.frombuffer(stream.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    if raw.size and raw.max() >= len(lut):
        raise ValueError("a test string has a symbol the n-gram alphabet lacks")
    out = lut[raw]
    if (out < 0).any():
        raise ValueError("a test string has a symbol the n-gram alphabet lacks")
    return out


def _contexts(x: np.ndarray, order: int, V: int, delim: int) -> np.ndarray:
    """Context code of every position: the previous `order` symbols (the stream is preceded by
    delimiters, as if a previous string had just ended)."""
    padded = np.concatenate([np.full(order, delim, dtype=np.int64), x])
    ctx = np.zeros(len(x), dtype=np.int64)
    for j in range(order):
        ctx = ctx * V + padded[j : j + len(x)]
    return ctx


class NGram:
    """Counts of (context, next symbol) over an alphabet that includes the delimiter."""

    def __init__(self, train: list[str], order: int, alpha: float = 0.01, alphabet=None, tokens=None):
        """`tokens`: how a string splits into symbols when they are not characters (word grammars)."""
        if order < 0:
            raise ValueError("order must be >= 0")
        symbols = set(alphabet) if alphabet is not None else set("".join(train))
        self.alphabet = sorted(symbols | {DELIM})
        self.V = len(self.alphabet)
        self.order, self.alpha = order, alpha
        self.delim = self.alphabet.index(DELIM)
        self.tokens = tokens
        x = _codes(train, self.alphabet, tokens)
        ctx = _contexts(x, order, self.V, self.delim)
        self.joint, self.joint_n = np.unique(ctx * self.V + x, return_counts=True)
        self.ctx, self.ctx_n = np.unique(ctx, return_counts=True)

    @staticmethod
    def _lookup(keys: np.ndarray, counts: np.ndarray, q: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(keys, q), 0, max(len(keys) - 1, 0))
        hit = keys[pos] == q if len(keys) else np.zeros(len(q), bool)
        return np.where(hit, counts[pos], 0)

    def bits_per_symbol(self, test: list[str]) -> float:
        """Mean -log2 p over every symbol of the test stream, delimiters included (= per predicted
        token of a model that also predicts the end marker)."""
        x = _codes(test, self.alphabet, self.tokens)
        ctx = _contexts(x, self.order, self.V, self.delim)
        c = self._lookup(self.joint, self.joint_n, ctx * self.V + x)
        n = self._lookup(self.ctx, self.ctx_n, ctx)
        p = (c + self.alpha) / (n + self.alpha * self.V)
        return float(-np.log2(p).mean())


def best_ngram(train: list[str], test: list[str], orders=range(6), alphabet=None, tokens=None) -> dict:
    """Bits per symbol for each order, and the best of them."""
    per = {int(k): NGram(train, k, alphabet=alphabet, tokens=tokens).bits_per_symbol(test) for k in orders}
    best = min(per, key=per.get)
    return {"bits_per_order": per, "best_order": best, "best_bits": per[best]}
