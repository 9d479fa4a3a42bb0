"""`text:PATH` corpora: a UTF-8 file, a folder of `*.txt` documents, or a glob, as one token stream.

The stream is encoded once against its own symbol table and cached as memory-mapped arrays keyed by
the files' contents (sha256), so a second run loads it without reading the text again. The splits are
contiguous (nanoGPT's shakespeare_char takes the first 90% for training, the rest for validation), and
the vocabulary comes from the training part only: symbols first seen in val/test become `.unk`. With
several documents each one ends with `.end`, so a model learns where documents stop; a single file is
the raw stream, character for character what nanoGPT trains on.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .vocab import END_ID, SPECIALS, UNK_ID, Vocab

CACHE_VERSION = 2  # 2: meta.json holds a checksum of ids.npy


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.9,0.05,0.05' -> fractions of the stream for train, val, test (test may be 0)."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(not 0 <= p <= 1 for p in parts) or abs(sum(parts) - 1) > 1e-6 \
            or parts[0] <= 0 or parts[1] <= 0:
        raise UserError(f"--split {text!r} must be three fractions train,val,test summing to 1 with train "
                        "and val > 0, e.g. 0.9,0.05,0.05 (or 0.9,0.1,0 for nanoGPT's split)")
    return parts  # type: ignore[return-value]


def resolve_files(path: str) -> list[Path]:
    """A file, a folder (every *.txt below it, sorted) or a glob (sorted)."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        return [p]
    if p.exists() and not p.is_dir():
        raise UserError(f"text:{path} is not a regular file (a device, a pipe or a socket); give a UTF-8 text file, "
                        "a folder of *.txt files or a glob")
    if p.is_dir():
        files = sorted(q for q in p.rglob("*.txt") if q.is_file())
        if not files:
            raise UserError(f"text:{path}: the folder holds no *.txt files")
        return files
    if any(ch in path for ch in "*?["):
        files = sorted(Path(q) for q in globlib.glob(os.path.expanduser(path), recursive=True) if Path(q).is_file())
        if not files:
            raise UserError(f"text:{path}: the pattern matches no files")
        return files
    raise UserError(f"text:{path}: no such file or folder; give a UTF-8 text file, a folder of *.txt files "
                    "or a glob, e.g. text:input.txt")


def _decode(f: Path, raw: bytes) -> str:
    try:
        # A byte-order mark is an encoding artefact, not a symbol of the corpus (Python's utf-8-sig).
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{f} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, e.g. "
                        f"iconv -f latin1 -t utf-8") from None


def cache_root() -> Path:
    return Path(os.environ.get("SEQGEN_TEXT_CACHE", Path.home() / ".cache" / "seqgen_jax" / "text"))


@dataclass
class Encoded:
    """The whole stream against the corpus's own symbol table (ids >= 4; `.end` between documents)."""

    ids: np.ndarray  # (N,) uint8/uint16/uint32, possibly memory-mapped
    symbols: list[str]  # raw id i + 4 -> symbol
    n_docs: int
    key: str
    content: str = ""  # sha256 of the files' bytes (not of the encoding): what config.json records


def counts(ids: np.ndarray, n: int) -> np.ndarray:
    """np.bincount in 1M-element chunks: on a whole uint8 array bincount first copies it to int64
    (800 MB for 100 MB of text) and ran 13x slower."""
    out = np.zeros(n, np.int64)
    for i in range(0, len(ids), 1 << 20):
        out += np.bincount(ids[i:i + (1 << 20)], minlength=n)[:n]
    return out


def _encode_chars(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    # Code points through one lookup table: linear time, no Python loop over characters. ASCII text
    # (most corpora) skips the UTF-32 step: its bytes are its code points.
    codes = []
    for t in texts:
        raw = t.encode("utf-8")
        if len(raw) == len(t):
            codes.append(np.frombuffer(raw, dtype=np.uint8))
        else:
            codes.append(np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32))
    top = max((int(c.max()) for c in codes if len(c)), default=0) + 1
    seen = np.zeros(top, bool)
    for c in codes:
        seen[c] = True
    present = np.flatnonzero(seen)
    dtype = np.uint8 if len(present) + 4 <= 256 else np.uint16 if len(present) + 4 <= 65536 else np.uint32
    table = np.zeros(top, dtype)
    table[present] = np.arange(len(present)) + len(SPECIALS)
    return _join([table[c] for c in codes], len(present)), [chr(int(c)) for c in present]


def _encode_words(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    index: dict[str, int] = {}
    parts = []
    for t in texts:
        words = t.split()
        parts.append(np.fromiter((index.setdefault(w, len(index)) for w in words), np.uint32, len(words)))
    # Symbols sorted, so ids never depend on first appearance.
    order = sorted(index, key=lambda w: w)
    remap = np.empty(len(index), np.uint32)
    remap[[index[w] for w in order]] = np.arange(len(order)) + len(SPECIALS)
    return _join([remap[p] for p in parts], len(order)), order


def _join(parts: list[np.ndarray], n_symbols: int) -> np.ndarray:
    dtype = np.uint8 if n_symbols + 4 <= 256 else np.uint16 if n_symbols + 4 <= 65536 else np.uint32
    if len(parts) == 1:
        return parts[0].astype(dtype)
    out = []
    for p in parts:
        out.extend([p.astype(dtype), np.array([END_ID], dtype)])
    return np.concatenate(out)


def encode_corpus(path: str, unit: str = "char", use_cache: bool = True) -> Encoded:
    files = resolve_files(path)
    h = hashlib.sha256(f"v{CACHE_VERSION} {unit} {len(files)}".encode())
    content = hashlib.sha256(f"{len(files)}".encode())
    raws = []
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {f}: {e.strerror or e}") from None
        raws.append(raw)
        for d in (h, content):
            d.update(len(raw).to_bytes(8, "little"))
            d.update(raw)
    key = h.hexdigest()[:24]
    digest = content.hexdigest()[:24]
    cache = cache_root() / key
    if use_cache:
        hit = _load_cache(cache)
        if hit is not None:
            hit.content = digest
            return hit
    texts = [_decode(f, raw) for f, raw in zip(files, raws)]
    del raws
    if not any(t.strip() for t in texts):
        raise UserError(f"text:{path} holds no text")
    ids, symbols = (_encode_chars if unit == "char" else _encode_words)(texts)
    enc = Encoded(ids, symbols, len(files), key, digest)
    if use_cache:
        _save_cache(cache, enc)
    return enc


def checksum(ids: np.ndarray) -> int:
    """CRC-32 of the array's bytes, in 16 MB pieces (a memory-mapped array is never copied whole)."""
    import zlib

    crc, flat = 0, ids.reshape(-1)
    step = max(1, (16 << 20) // max(flat.itemsize, 1))
    for i in range(0, len(flat), step):
        crc = zlib.crc32(np.ascontiguousarray(flat[i:i + step]).tobytes(), crc)
    return crc


def _remove_orphans(path: Path) -> None:
    """Temporary arrays of cache builds whose process is gone (killed mid-build)."""
    for tmp in path.glob(".ids-*.npy"):
        try:
            pid = int(tmp.name[5:-4])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            pass  # not ours to judge: a name we did not write, or another user's live process


def _save_cache(path: Path, enc: Encoded) -> None:
    """Arrays first, then meta.json by rename: a cache without meta.json is never read."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        tmp = path / f".ids-{os.getpid()}.npy"
        np.save(tmp, enc.ids)
        os.replace(tmp, path / "ids.npy")
        from ..io import atomic_write_text

        atomic_write_text(path / "meta.json", json.dumps({"version": CACHE_VERSION, "symbols": enc.symbols,
                                                          "n_docs": enc.n_docs, "n": int(len(enc.ids)),
                                                          "crc32": checksum(enc.ids)}, ensure_ascii=False))
    except OSError:
        pass  # a read-only or full cache folder only costs the next run an encode


def _load_cache(path: Path) -> Encoded | None:
    """The cached stream, verified (length, ids below the symbol count, checksum); None if missing, and
    a warning and None (so it is rebuilt) if damaged."""
    if not (path / "meta.json").exists():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        ids = np.load(path / "ids.npy", mmap_mode="r")
        if meta.get("version") != CACHE_VERSION:
            return None  # an older layout: rebuilt without a fuss
        symbols = list(meta["symbols"])
        ok = (ids.ndim == 1 and len(ids) == meta["n"] and all(isinstance(x, str) for x in symbols)
              and (len(ids) == 0 or int(ids.max()) < len(symbols) + len(SPECIALS))
              and checksum(ids) == meta["crc32"])
        if ok:
            return Encoded(ids, symbols, int(meta["n_docs"]), path.name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    import sys

    print(f"warning: the text cache {path} is damaged; rebuilding it", file=sys.stderr)
    return None


@dataclass
class TextSplits:
    vocab: Vocab
    train: np.ndarray  # (N_train,) ids in `vocab`
    val: np.ndarray
    test: np.ndarray
    fractions: tuple[float, float, float]
    n_docs: int
    cache: str
    unigram_bits: float  # entropy of the training split's token frequencies: the no-context baseline


def build_splits(enc: Encoded, fractions: tuple[float, float, float], *, char: bool = True,
                 voc: int | None = None) -> TextSplits:
    n = len(enc.ids)
    a = int(n * fractions[0])
    b = a + int(n * fractions[1]) if fractions[2] > 0 else n
    if a < 2 or b - a < 2:
        raise UserError(f"the corpus has {n:,} tokens: too few for --split {','.join(map(str, fractions))} "
                        "(each of train and val needs at least 2)")
    tr_raw = np.asarray(enc.ids[:a])
    cnt = counts(tr_raw, len(enc.symbols) + len(SPECIALS))
    cnt[:len(SPECIALS)] = 0
    seen = np.flatnonzero(cnt)
    if voc is not None and len(seen) > voc:
        # The K most frequent (ties broken by id, so by symbol order); the rest become `.unk`.
        seen = np.sort(seen[np.lexsort((seen, -cnt[seen]))][:voc])
    vocab = Vocab(SPECIALS + tuple(enc.symbols[i - len(SPECIALS)] for i in seen), char)
    dtype = np.uint8 if len(vocab) <= 256 else np.uint16 if len(vocab) <= 65536 else np.int32
    remap = np.full(len(enc.symbols) + len(SPECIALS), UNK_ID, dtype)  # the table in the output dtype:
    remap[END_ID] = END_ID  # one gather, no int64 copy of the stream
    remap[seen] = np.arange(len(seen)) + len(SPECIALS)
    take = lambda lo, hi: remap[np.asarray(enc.ids[lo:hi])]  # noqa: E731
    train = take(0, a)
    # Unigram entropy of the training split as encoded (tokens outside the vocabulary pooled as .unk).
    kept = cnt[seen]
    p = np.append(kept, cnt.sum() - kept.sum()) / len(train)
    p = p[p > 0]
    return TextSplits(vocab, train, take(a, b), take(b, n), fractions, enc.n_docs, enc.key,
                      float(-(p * np.log2(p)).sum()))
