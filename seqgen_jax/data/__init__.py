"""Datasets: the course's three synthetic languages (with their truth) and IMDb.

`get_language(spec)` builds a Language from a spec string; `build_dataset(DataConfig)` gives the
encoded train/val/test splits every other module consumes; `load_*` are the course-style loaders."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import DataConfig
from ..errors import UserError
from .base import Entropy, Language
from .brackets import Brackets
from .spec import PATH_KINDS, dataset_kind, default_run_name, spec_family
from .ndfa import NDFA
from .toy import Toy
from .vocab import Ragged, Vocab

SYNTHETIC = {"ndfa": NDFA, "brackets": Brackets, "dyck1": Brackets, "toy": Toy}
NAMES = "ndfa, brackets (alias dyck1), toy, pcfg:FILE, pfsa:FILE.json, imdb, text:PATH"


def parse_spec(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.strip().partition(":")
    if name.lower() in PATH_KINDS:
        if not rest:
            raise UserError(f"{name}: needs a path, e.g. {name}:input.txt")
        return name.lower(), {"path": rest}
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        try:
            if not eq:
                raise ValueError
            params[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"dataset parameter {item!r} in {spec!r} is not key=number, e.g. "
                            "brackets:p=0.4375") from None
    return name.lower(), params


def absolute_spec(spec: str) -> str:
    """`text:`/`pcfg:`/`pfsa:` paths made absolute, so the run's config.json works from any folder."""
    import os

    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in PATH_KINDS and rest:
        return f"{kind.lower()}:{os.path.abspath(os.path.expanduser(rest))}"
    return spec


def get_language(spec: str) -> Language:
    name, params = parse_spec(spec)
    if name in CORPORA:
        raise UserError(f"{name} is a text corpus without a known generating process; this needs one of "
                        "ndfa, brackets, toy, pcfg:FILE, pfsa:FILE")
    if name == "pcfg":
        from .pcfg import PCFG

        return PCFG(params["path"])
    if name == "pfsa":
        from .pfsa import PFSA

        return PFSA(params["path"])
    if name not in SYNTHETIC:
        raise UserError(f"unknown dataset {name!r}; choose one of {NAMES}")
    try:
        return SYNTHETIC[name](**params)
    except TypeError:
        raise UserError(f"dataset {name!r} does not take parameters {sorted(params)}") from None


def course_strings(lang: Language, n: int, seed: int = 0) -> list[str]:
    """The course's list: n strings drawn with random.Random(seed), stably sorted by length."""
    return sorted(lang.strings(n, seed), key=len)


# Split seeds: the training list is the course's (seed 0 by default); validation and test strings are
# drawn from other, disjoint seeds so they are independent samples of the same process.
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 1, 2


@dataclass
class Dataset:
    name: str  # the family: ndfa, brackets, toy, pcfg, pfsa, imdb, text
    spec: str
    vocab: Vocab
    train: Ragged
    val: Ragged
    test: Ragged
    language: Language | None = None
    train_strings: list[str] | None = None  # synthetic only: for novelty
    info: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """`dataset_kind`: "language", "text" or "imdb"."""
        return self.name if self.name in ("text", "imdb") else "language"

    def split(self, name: str) -> Ragged:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def strings(self, name: str) -> list[str]:
        r = self.split(name)
        return [self.vocab.decode(r[i]) for i in range(len(r))]

    def subset(self, name: str, limit: int | None, seed: int = 0) -> np.ndarray:
        """Positions of at most `limit` sequences of a split, drawn at random with `seed` and stratified
        by label where the corpus has labels (IMDb's reviews are stored sorted by label, so a prefix
        would be one class); all positions, in order, without a limit."""
        n = len(self.split(name))
        if limit is None or limit >= n:
            return np.arange(n)
        labels = self.info.get("labels", {}).get(name)
        return stratified_subset(labels if labels is not None else np.zeros(n, np.int8), limit, seed)


def check_corpus(cfg: DataConfig, ds: Dataset, doing: str, allow_changed: bool = False) -> None:
    """A text corpus must still hold what the run was trained on: appended text would be scored as
    another split, new symbols as nothing at all. Refused in one line saying what changed."""
    now, then = ds.info.get("content_hash"), cfg.content_hash
    if now is None or then is None or now == then or allow_changed:
        return
    raise UserError(f"{cfg.name.partition(':')[2]} has changed since this run was trained (content {now}, trained "
                    f"on {then}): {doing} would use other text; restore the file, train a new run"
                    + (", or pass --allow-changed-corpus to evaluate on it knowingly" if doing.startswith("eval")
                       else ""))


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n positions drawn without replacement with `seed`, each label getting its share of n (largest
    remainders), returned sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take))[: n - take.sum()]:
        take[i] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def vocab_for(lang: Language) -> Vocab:
    return Vocab.from_symbols(lang.alphabet, char=lang.char)


def build_dataset(cfg: DataConfig) -> Dataset:
    """Encoded splits of any dataset: a corpus from the registry, else a language with its truth."""
    name, params = parse_spec(cfg.name)
    if name in CORPUS_BUILDERS:
        return CORPUS_BUILDERS[name](cfg, params)
    lang = get_language(cfg.name)
    if (cfg.train_lengths or cfg.test_lengths) and dataset_kind(cfg.name) != "language":
        raise UserError("--train-lengths and --test-lengths apply to languages with a known truth")
    vocab = vocab_for(lang)
    if cfg.train_lengths:
        from ..config import parse_lengths

        rng = parse_lengths(cfg.train_lengths)
        tr = strings_in_lengths(lang, cfg.n_train, cfg.seed, rng)
        va = strings_in_lengths(lang, cfg.n_val, cfg.seed + VAL_SEED_OFFSET, rng)
    else:
        tr = lang.strings(cfg.n_train, cfg.seed)
        va = lang.strings(cfg.n_val, cfg.seed + VAL_SEED_OFFSET)
    if cfg.test_lengths:
        from ..config import parse_lengths

        te = strings_per_length(lang, cfg.test_per_length, cfg.seed + TEST_SEED_OFFSET,
                                parse_lengths(cfg.test_lengths, "--test-lengths"))
    else:
        te = lang.strings(cfg.n_test, cfg.seed + TEST_SEED_OFFSET)
    return Dataset(name, lang.spec, vocab, Ragged.from_strings(tr, vocab), Ragged.from_strings(va, vocab),
                   Ragged.from_strings(te, vocab), language=lang, train_strings=tr)


def strings_in_lengths(lang: Language, n: int, seed: int, lengths: tuple[int, int]) -> list[str]:
    """n strings from P(s | A <= |s| <= B): drawn from the process and kept when in range (exactly
    the conditional distribution), or, when the range is rare, lengths drawn from the exact truncated
    length distribution and a string drawn at each."""
    import random

    a, b = lengths
    rng = random.Random(seed)
    out: list[str] = []
    draws = 0
    while len(out) < n and draws < 20 * n + 1000:
        s = lang.sample(rng)
        draws += 1
        if a <= len(lang.tokens(s)) <= b:
            out.append(s)
    if len(out) == n:
        return out
    pl = np.array([[r["length"], r["p_length"]] for r in length_table(lang, b) if r["length"] >= a])
    if not len(pl):
        raise UserError(f"{lang.spec} has no strings with lengths {a}-{b}; choose other lengths")
    rs = np.random.default_rng(seed)
    picks = rs.choice(pl[:, 0].astype(int), size=n, p=pl[:, 1] / pl[:, 1].sum())
    return [lang.sample_length(rng, int(k)) for k in picks]


def strings_per_length(lang: Language, per: int, seed: int, lengths: tuple[int, int]) -> list[str]:
    """`per` strings drawn at each length C..D the language has (so rare lengths are tested too)."""
    import random

    rng = random.Random(seed)
    have = [r["length"] for r in length_table(lang, lengths[1]) if r["length"] >= lengths[0] and r["p_length"] > 0]
    if not have:
        raise UserError(f"{lang.spec} has no strings with lengths {lengths[0]}-{lengths[1]}; choose other lengths")
    return [lang.sample_length(rng, n) for n in have for _ in range(per)]


def length_table(lang: Language, max_len: int) -> list[dict]:
    """[{length, p_length}] up to max_len, without the per-length entropies when the language can skip
    them."""
    quick = getattr(lang, "length_probs", None)
    if quick is not None:
        p = quick(max_len)
        return [{"length": n, "p_length": float(p[n])} for n in range(max_len + 1) if p[n] > 0]
    return [{"length": r["length"], "p_length": r["p_length"]} for r in lang.by_length(max_len)]


def _imdb_dataset(cfg: DataConfig, params: dict) -> Dataset:
    from .imdb import ImdbOptions, load_corpus

    corpus = load_corpus(cfg.imdb, ImdbOptions(char=cfg.char, voc=cfg.voc, keep_br=cfg.keep_br))
    tr_idx, va_idx = corpus.val_split(cfg.n_val, cfg.seed)
    lab_tr, lab_te = corpus.labels["train"], corpus.labels["test"]
    # The archive stores reviews sorted by label: subsets are drawn at random, stratified by label,
    # never taken from the front.
    if cfg.n_train < len(tr_idx):
        tr_idx = tr_idx[stratified_subset(lab_tr[tr_idx], cfg.n_train, cfg.seed)]
    te_idx = np.arange(len(corpus.test))
    if cfg.n_test < len(te_idx):
        te_idx = stratified_subset(lab_te, cfg.n_test, cfg.seed + TEST_SEED_OFFSET)
    labels = {"train": lab_tr[tr_idx], "val": lab_tr[va_idx], "test": lab_te[te_idx]}
    train, val = corpus.train.take(tr_idx), corpus.train.take(va_idx)
    info = {"cache": corpus.cache, "n_test_total": len(corpus.test), "labels": labels}
    if cfg.carry_state:
        # Reviews in a random order (not sorted by label), each framed by .start/.end, trained as one
        # stream with the state carried; evaluation still scores every review whole from a zero state.
        # Built when training asks for it: evaluating a run never needs the 30M-token copy.
        def stream():
            order = np.random.default_rng([cfg.seed, 11]).permutation(len(train))
            return {"train": train.framed(order), "val": val.framed(), "framed": True,
                    "unit": "char" if cfg.char else "word", "about": f"{len(train):,} train / {len(val):,} val reviews"}

        info["train_stream"] = stream
    return Dataset("imdb", "imdb", corpus.vocab, train, val, corpus.test.take(te_idx), info=info)


def _text_dataset(cfg: DataConfig, params: dict) -> Dataset:
    from .text import build_splits, encode_corpus, parse_split

    fractions = parse_split(cfg.split)
    enc = encode_corpus(params["path"], "char" if cfg.char else "word")
    sp = build_splits(enc, fractions, char=cfg.char, voc=cfg.voc)
    one = lambda ids: Ragged(ids, np.array([0, len(ids)], np.int64))  # noqa: E731  the split as one sequence
    unit = "char" if cfg.char else "word"
    info = {"stream": {"train": sp.train, "val": sp.val, "test": sp.test}, "unit": unit,
            "fractions": list(fractions), "cache": sp.cache, "n_docs": sp.n_docs, "content_hash": enc.content,
            "unigram_bits_per_token": sp.unigram_bits,
            "train_stream": lambda: {"train": sp.train, "val": sp.val, "framed": False, "unit": unit,
                                     "about": f"split {list(fractions)}, unigram {sp.unigram_bits:.3f} bits/{unit}"}}
    return Dataset("text", cfg.name, sp.vocab, one(sp.train), one(sp.val), one(sp.test), info=info)


# The corpora: text without a known generating process. A new corpus is one builder here (DataConfig and
# the spec's parameters -> Dataset) and its module; everything downstream reads Dataset only.
CORPUS_BUILDERS = {"imdb": _imdb_dataset, "text": _text_dataset}
CORPORA = tuple(CORPUS_BUILDERS)  # text without a known generating process


def _course_load(lang: Language, n: int, seed: int):
    vocab = vocab_for(lang)
    seqs = Ragged.from_strings(course_strings(lang, n, seed), vocab).to_lists()
    return seqs, (list(vocab.i2w), vocab.w2i)


def load_ndfa(n: int = 150_000, seed: int = 0, p: float = 0.25):
    """Course-style: (sequences, (i2w, w2i)); strings sorted by length, no start/end markers."""
    return _course_load(NDFA(p), n, seed)


def load_brackets(n: int = 150_000, beta: float = 7 / 16, seed: int = 0):
    return _course_load(Brackets(beta), n, seed)


def load_toy(n: int = 150_000, seed: int = 0):
    return _course_load(Toy(), n, seed)


def load_imdb(final: bool = False, val: int = 5000, seed: int = 0, voc: int | None = None,
              char: bool = False, path=None, keep_br: bool = False):
    """Course-style: ((x_train, y_train), (x_val, y_val), (i2w, w2i), 2); with `final=True` the second
    pair is the 25,000 test reviews and train holds all 25,000 training reviews."""
    from .imdb import ImdbOptions, load_corpus

    corpus = load_corpus(path, ImdbOptions(char=char, voc=voc, keep_br=keep_br))
    vocab = corpus.vocab
    if final:
        tr, te = corpus.train, corpus.test
        return ((tr.to_lists(), corpus.labels["train"].tolist()),
                (te.to_lists(), corpus.labels["test"].tolist()), (list(vocab.i2w), vocab.w2i), 2)
    tr_idx, va_idx = corpus.val_split(val, seed)
    lab = corpus.labels["train"]
    return ((corpus.train.take(tr_idx).to_lists(), lab[tr_idx].tolist()),
            (corpus.train.take(va_idx).to_lists(), lab[va_idx].tolist()), (list(vocab.i2w), vocab.w2i), 2)


__all__ = ["Language", "Entropy", "NDFA", "Brackets", "Toy", "Vocab", "Ragged", "Dataset", "get_language",
           "build_dataset", "course_strings", "load_ndfa", "load_brackets", "load_toy", "load_imdb",
           "dataset_kind", "default_run_name", "spec_family", "PATH_KINDS", "check_corpus", "length_table"]
