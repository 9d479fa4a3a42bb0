"""Token vocabularies and ragged token arrays.

Every vocabulary starts with the course's four specials, in the course's order, so id 0 is padding,
1 starts a sequence, 2 ends it and 3 stands for unknown tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError

PAD, START, END, UNK = ".pad", ".start", ".end", ".unk"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class Vocab:
    """`i2w` lists tokens by id; `char` says whether tokens are characters (joined with '') or words
    (joined with ' ')."""

    i2w: tuple[str, ...]
    char: bool = True

    def __post_init__(self):
        if tuple(self.i2w[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")

    @classmethod
    def from_symbols(cls, symbols: Iterable[str], char: bool = True) -> "Vocab":
        """Sorted symbols, so the ids never depend on set iteration order (the course's did)."""
        return cls(SPECIALS + tuple(sorted(set(symbols) - set(SPECIALS))), char)

    @property
    def w2i(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.i2w)}

    def __len__(self) -> int:
        return len(self.i2w)

    def tokens_of(self, text: str) -> list[str]:
        return list(text) if self.char else text.split()

    def encode(self, text: str, strict: bool = True) -> np.ndarray:
        w2i = self.w2i
        out = []
        for t in self.tokens_of(text):
            if t in w2i and w2i[t] >= len(SPECIALS):
                out.append(w2i[t])
            elif strict:
                raise UserError(f"symbol {t!r} is not in the vocabulary {''.join(self.i2w[4:])!r}")
            else:
                out.append(UNK_ID)
        return np.asarray(out, dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        """Stops at the first `.end`; padding is dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            out.append(self.i2w[i])
        return ("" if self.char else " ").join(out)

    def to_json(self) -> dict:
        return {"i2w": list(self.i2w), "char": self.char}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        return cls(tuple(d["i2w"]), bool(d.get("char", True)))

    def save(self, path) -> None:
        from ..io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "Vocab":
        from ..errors import UserError

        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            v = cls.from_json(d)
        except FileNotFoundError:
            raise UserError(f"{path} is missing; the run directory is damaged (retrain, or copy vocab.json "
                            "from a run of the same dataset)") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise UserError(f"{path} is not a valid vocabulary ({type(e).__name__}); the run directory is damaged") from None
        if tuple(v.i2w[:4]) != (".pad", ".start", ".end", ".unk"):
            raise UserError(f"{path} lacks the special symbols .pad .start .end .unk; the run directory is damaged")
        return v


@dataclass
class Ragged:
    """Sequences of token ids stored as one flat array plus offsets: `flat[offsets[i]:offsets[i+1]]`.

    This is how a 65-million-character corpus stays one (memory-mappable) array instead of 50,000
    Python lists."""

    flat: np.ndarray  # (N_tokens,) integer ids, no start/end markers
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def take(self, idx: np.ndarray) -> "Ragged":
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        if len(idx) == 0:
            return Ragged(self.flat[:0], offsets)
        # Vectorised gather of many slices: position of each output token in `flat`.
        starts = np.repeat(self.offsets[idx] - offsets[:-1], lens)
        flat = self.flat[starts + np.arange(offsets[-1])]
        return Ragged(flat, offsets)

    def framed(self, order: np.ndarray | None = None, *, end: bool = True) -> np.ndarray:
        """The sequences (in `order`) as one int32 stream, each framed as `.start` tokens `.end`: what a
        corpus of separate documents is trained on with the state carried across windows. `end=False`
        leaves the `.end` out (`.start` tokens): the packed feed, where the next `.start` stands for it."""
        r = self.take(order) if order is not None else self
        n, lens = len(r), r.lengths
        k = 2 if end else 1
        out = np.empty(len(r.flat) + k * n, np.int32)
        starts = r.offsets[:-1] + k * np.arange(n)  # position of each `.start`
        out[starts] = START_ID
        body = np.ones(len(out), bool)
        body[starts] = False
        if end:
            out[starts + lens + 1] = END_ID
            body[starts + lens + 1] = False
        out[body] = r.flat
        return out

    def to_lists(self) -> list[list[int]]:
        return [self[i].tolist() for i in range(len(self))]

    @classmethod
    def from_strings(cls, strings: Sequence[str], vocab: Vocab) -> "Ragged":
        """Vectorised encoding of many character strings (unknown characters become `.unk`)."""
        if not vocab.char:
            seqs = [vocab.encode(s, strict=False) for s in strings]
            lens = np.array([len(s) for s in seqs], dtype=np.int64)
            flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
            return cls(flat.astype(np.int32), np.concatenate([[0], np.cumsum(lens)]))
        lens = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
        codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32)
        table = char_table(vocab)
        codes = np.where(codes < len(table), codes, 0)
        ids = table[codes]
        dtype = np.uint8 if len(vocab) <= 256 else np.uint16 if len(vocab) <= 65536 else np.int32
        return cls(ids.astype(dtype), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))


def char_table(vocab: Vocab) -> np.ndarray:
    """Lookup table code point -> id (`.unk` for characters outside the vocabulary)."""
    chars = [w for w in vocab.i2w[4:] if len(w) == 1]
    top = max((ord(c) for c in chars), default=0) + 1
    table = np.full(top, UNK_ID, dtype=np.int32)
    for i, w in enumerate(vocab.i2w):
        if i >= 4 and len(w) == 1:
            table[ord(w)] = i
    return table
