"""The Large Movie Review Dataset (Maas et al., 2011) read in its original layout.

Sources: the official `aclImdb_v1.tar.gz` (with or without `train/unsup/`), an extracted `aclImdb/`
folder, or the course's preprocessed `imdb.{char,word}.pkl.gz`. Reading 50,000 files is slow, so the
encoded corpus is cached as memory-mapped NumPy arrays keyed by the source and the options."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np

from ..errors import UserError
from .vocab import SPECIALS, UNK_ID, Ragged, Vocab

ENV_VAR = "SEQGEN_IMDB"
CACHE_ENV = "SEQGEN_CACHE"
_CACHE_VERSION = 1
_REVIEW = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_WORD = re.compile(r"[\w']+|[^\w\s]")
HOW_TO_GET = (
    "download aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ and pass "
    f"--imdb PATH (the archive or the extracted aclImdb/ folder) or set {ENV_VAR}=PATH")


@dataclass(frozen=True)
class ImdbOptions:
    char: bool = True  # character tokens (else lower-cased word tokens)
    voc: int | None = None  # keep the `voc` most frequent entries of i2w (specials included)
    keep_br: bool = False  # keep `<br />` line breaks as they are instead of '\n'


@dataclass
class ImdbCorpus:
    """All 50,000 labelled reviews, encoded: `train` and `test` hold 25,000 each."""

    vocab: Vocab
    train: Ragged
    test: Ragged
    labels: dict  # split -> (n,) int8, 1 = positive
    ratings: dict  # split -> (n,) int8, the star rating from the file name
    cache: str | None

    def val_split(self, val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, val indices) into `train`: `val` reviews drawn with `seed`, as the course."""
        n = len(self.train)
        if not 0 <= val < n:
            raise UserError(f"--n-val {val} is out of range for {n:,} training reviews; choose 0 <= --n-val < {n}")
        val_idx = np.array(sorted(random.Random(seed).sample(range(n), k=val)), dtype=np.int64)
        mask = np.ones(n, bool)
        mask[val_idx] = False
        return np.flatnonzero(mask), val_idx


def resolve_source(path: str | os.PathLike | None) -> Path:
    if path is None:
        path = os.environ.get(ENV_VAR)
    if not path:
        raise UserError(f"the imdb dataset needs the review corpus: {HOW_TO_GET}")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"IMDb source {p} does not exist; {HOW_TO_GET}")
    return p


def _clean(text: str, keep_br: bool) -> str:
    return text if keep_br else text.replace("<br />", "\n")


def _read_reviews(src: Path) -> dict:
    """{split: [(label, id, rating, text)]} from an archive or folder, sorted for determinism."""
    out = {"train": [], "test": []}

    def add(name: str, data: bytes):
        m = _REVIEW.search(name)
        if not m:
            return
        split, pol, rid, rating = m.groups()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{name} in {src} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                            "use an unmodified aclImdb_v1.tar.gz") from None
        out[split].append((1 if pol == "pos" else 0, int(rid), int(rating), text))

    if src.is_dir():
        root = src / "aclImdb" if (src / "aclImdb").is_dir() else src
        for split in ("train", "test"):
            for pol in ("pos", "neg"):
                d = root / split / pol
                if d.is_dir():
                    for f in d.iterdir():
                        add(f"aclImdb/{split}/{pol}/{f.name}", f.read_bytes())
    else:
        try:
            with tarfile.open(src, "r:*") as tf:
                for m in tf:
                    if m.isfile() and _REVIEW.search(m.name):
                        add(m.name, tf.extractfile(m).read())
        except (tarfile.TarError, OSError, EOFError) as e:
            # tarfile lists every compression it tried on separate lines: keep the message one line.
            why = "empty file" if src.stat().st_size == 0 else (str(e).splitlines() or [type(e).__name__])[0].rstrip(":")
            raise UserError(f"{src} is not a readable tar archive ({why}); {HOW_TO_GET}") from None
    for split in out:
        if not out[split]:
            raise UserError(f"{src} holds no aclImdb/{split}/{{pos,neg}}/*.txt reviews; {HOW_TO_GET}")
        out[split].sort(key=lambda r: (r[0], r[1]))
    # The corpus is balanced: 12,500 reviews per split and polarity in the official archive, n each in
    # any faithful subset. tarfile stops at a damaged header without an error, so a short read shows
    # only here; it is refused (and so never cached) instead of loading as a smaller corpus.
    counts = {(sp, pol): sum(1 for r in out[sp] if r[0] == lab) for sp in out for pol, lab in (("pos", 1), ("neg", 0))}
    if len(set(counts.values())) != 1:
        found = ", ".join(f"{sp}/{pol} {n:,}" for (sp, pol), n in counts.items())
        raise UserError(f"{src} is incomplete or damaged: the four review folders should hold the same number "
                        f"of reviews (12,500 each in the official archive), found {found}; {HOW_TO_GET}")
    return out


def _tokenize_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _build_vocab(texts: list[str], opts: ImdbOptions) -> Vocab:
    """Tokens sorted by training frequency (ties by token), so `voc=K` keeps the K most frequent."""
    if opts.char:
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        counts = np.bincount(codes)
        nz = np.flatnonzero(counts)
        order = sorted(nz.tolist(), key=lambda c: (-counts[c], c))
        tokens = [chr(c) for c in order]
    else:
        freq: dict[str, int] = {}
        for t in texts:
            for w in _tokenize_words(t):
                freq[w] = freq.get(w, 0) + 1
        tokens = sorted(freq, key=lambda w: (-freq[w], w))
    i2w = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
    if opts.voc is not None:
        if opts.voc < len(SPECIALS) + 1:
            raise UserError(f"voc={opts.voc} is too small; keep at least {len(SPECIALS) + 1} entries")
        i2w = i2w[: opts.voc]
    return Vocab(tuple(i2w), char=opts.char)


def _encode(texts: list[str], vocab: Vocab) -> Ragged:
    if vocab.char:
        return Ragged.from_strings(texts, vocab)
    w2i = vocab.w2i
    seqs = [[w2i.get(w, UNK_ID) for w in _tokenize_words(t)] for t in texts]
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.fromiter((i for s in seqs for i in s), dtype=np.int32, count=int(lens.sum()))
    return Ragged(flat, np.concatenate([[0], np.cumsum(lens)]))


def _from_pickle(src: Path, opts: ImdbOptions) -> ImdbCorpus:
    """The course's `imdb.{char,word}.pkl.gz`: (sequences, labels, i2w, w2i) with per-split lists."""
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as f:
            sequences, labels, i2w, _ = pickle.load(f)
    except Exception as e:  # a foreign pickle can fail in many ways
        raise UserError(f"{src} is not the course's IMDb pickle ({type(e).__name__}); {HOW_TO_GET}") from None
    i2w = list(i2w)
    if tuple(i2w[:4]) != SPECIALS:
        raise UserError(f"{src}: its i2w does not start with {SPECIALS}; is it the course's pickle?")
    if opts.voc is not None:
        i2w = i2w[: opts.voc]
    vocab = Vocab(tuple(i2w), char=all(len(w) == 1 for w in i2w[4:]))
    parts, labs = {}, {}
    for split in ("train", "test"):
        seqs = sequences[split]
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(lens.sum()))
        flat = np.where(flat < len(i2w), flat, UNK_ID).astype(np.int32)
        parts[split] = Ragged(flat, np.concatenate([[0], np.cumsum(lens)]))
        labs[split] = np.asarray(labels[split], dtype=np.int8)
    ratings = {k: np.full(len(v), -1, np.int8) for k, v in labs.items()}
    return ImdbCorpus(vocab, parts["train"], parts["test"], labs, ratings, None)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "seqgen_jax")


def _cache_key(src: Path, opts: ImdbOptions) -> str:
    st = src.stat()
    ident = {"src": str(src.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
             "opts": asdict(opts), "v": _CACHE_VERSION}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _save_cache(path: Path, corpus: ImdbCorpus) -> None:
    """Written to a temporary folder and renamed, so a killed process never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        for split, r in (("train", corpus.train), ("test", corpus.test)):
            np.save(tmp / f"{split}_flat.npy", r.flat)
            np.save(tmp / f"{split}_offsets.npy", r.offsets)
            np.save(tmp / f"{split}_labels.npy", corpus.labels[split])
            np.save(tmp / f"{split}_ratings.npy", corpus.ratings[split])
        (tmp / "vocab.json").write_text(json.dumps(corpus.vocab.to_json(), ensure_ascii=False))
        try:
            os.replace(tmp, path)
        except OSError:  # another process filled the cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(path: Path) -> ImdbCorpus | None:
    """The cached corpus, or None when any file is missing, truncated or inconsistent (checked
    cheaply: shapes, offsets against the token count, ids against the vocabulary's size)."""
    try:
        vocab = Vocab.from_json(json.loads((path / "vocab.json").read_text(encoding="utf-8")))
        parts, labels, ratings = {}, {}, {}
        for split in ("train", "test"):
            flat = np.load(path / f"{split}_flat.npy", mmap_mode="r")
            off = np.load(path / f"{split}_offsets.npy")
            labels[split] = np.load(path / f"{split}_labels.npy")
            ratings[split] = np.load(path / f"{split}_ratings.npy")
            n = len(off) - 1
            if (flat.ndim != 1 or off.ndim != 1 or n < 1 or off[0] != 0 or off[-1] != len(flat)
                    or np.any(np.diff(off) < 0) or len(labels[split]) != n or len(ratings[split]) != n
                    or (len(flat) and int(flat[-(1 << 16):].max()) >= len(vocab))):
                return None
            parts[split] = Ragged(flat, off)
    except (OSError, ValueError, KeyError, TypeError, EOFError, json.JSONDecodeError):
        return None
    return ImdbCorpus(vocab, parts["train"], parts["test"], labels, ratings, str(path))


def load_corpus(path=None, opts: ImdbOptions = ImdbOptions(), use_cache: bool = True) -> ImdbCorpus:
    src = resolve_source(path)
    if src.is_file() and src.name.endswith((".pkl", ".pkl.gz")):
        return _from_pickle(src, opts)
    cdir = cache_root() / f"imdb-{_cache_key(src, opts)}"
    if use_cache and cdir.exists():
        hit = _load_cache(cdir)
        if hit is not None:
            return hit
        print(f"warning: the IMDb cache {cdir} is damaged; rebuilding it from {src}", file=sys.stderr)
        shutil.rmtree(cdir, ignore_errors=True)
    reviews = _read_reviews(src)
    texts = {s: [_clean(r[3], opts.keep_br) for r in rs] for s, rs in reviews.items()}
    vocab = _build_vocab(texts["train"], opts)
    corpus = ImdbCorpus(
        vocab, _encode(texts["train"], vocab), _encode(texts["test"], vocab),
        {s: np.array([r[0] for r in rs], np.int8) for s, rs in reviews.items()},
        {s: np.array([r[2] for r in rs], np.int8) for s, rs in reviews.items()}, None)
    if use_cache:
        try:
            _save_cache(cdir, corpus)
            return _load_cache(cdir) or corpus
        except OSError:
            pass  # an unwritable cache only costs speed
    return corpus
