"""Scores against the truth: cross-entropy, KL to the true process, valid-sample rates, length
distribution, novelty, n-gram baselines; for IMDb, statistics of samples against real reviews.

Everything takes a parameter pytree and a Dataset and returns a flat dict of the documented keys."""
from __future__ import annotations

import json
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from .buckets import fixed_order
from .data.base import LN2
from .config import RunConfig
from .data import Dataset
from .data.ngram import best_ngram
from .data.vocab import END_ID, Ragged
from .io import atomic_write_json
from .model import token_logprobs
from .sample import sample



def tkey(t: float) -> str:
    return str(float(t))


# ---------------------------------------------------------------- model scores on strings
def _make_forward(cfg):
    def fwd(params, data, idx):
        rows = jnp.take(data, idx, axis=0)
        lp, logits = token_logprobs(params, rows, cfg=cfg.model)
        return lp, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.jit(fwd)


_FORWARD_CACHE: dict = {}


def score_sequences(params, cfg: RunConfig, seqs: Ragged, max_tokens: int | None = None):
    """Per sequence: model log2-probability (end marker included) and the model's argmax next token
    at every position (len + 1 of them), on the same device-resident buckets as training."""
    from .buckets import BucketedSplit
    from .parallel import Placement

    fwd = _FORWARD_CACHE.setdefault(cfg.model, _make_forward(cfg))
    # Whole sequences, so the budget must hold several of the longest (a row over the budget gets a
    # batch of one and a compilation of its own: 2,000 IMDb reviews under the training budget of
    # 2,048 tokens took 4x longer). Forward only, so a large budget fits where training's would not.
    longest = int(seqs.lengths.max()) + 1 if len(seqs) else 1
    budget = max_tokens or max(cfg.train.max_tokens, 1 << 16, 4 * longest)
    # Few shapes: each is a compilation (~0.3 s on CPU), and scoring is one pass, so padding is cheap.
    split = BucketedSplit.build(seqs, budget, 6, Placement())
    plan = split.plan
    log2p = np.zeros(len(seqs))
    preds: list = [None] * len(seqs)
    for b, idx in fixed_order(plan):
        members = split.members[b]
        lp, am = jax.device_get(fwd(params, *split.batch(b, idx)))
        for r, i in enumerate(idx):
            if i >= len(members):
                continue
            j = members[i]
            L = len(seqs[j]) + 1
            log2p[j] = lp[r, :L].sum() / LN2
            preds[j] = am[r, :L]
    return log2p, preds


# ---------------------------------------------------------------- text statistics (IMDb)
def repetition_rate(text: str, n: int = 8, min_count: int = 3) -> float:
    """Share of characters covered by an n-gram (length >= n) that occurs >= min_count times in the
    text. Any longer repeated n-gram contains repeated n-grams of length n, so n-grams suffice."""
    if len(text) < n:
        return 0.0
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(text) + 1, np.int32)
    for i, g in enumerate(grams):
        if counts[g] >= min_count:
            covered[i] += 1
            covered[i + n] -= 1
    return float((np.cumsum(covered)[:-1] > 0).mean())


def text_stats(texts: list[str]) -> dict:
    grams = [t[i : i + 4] for t in texts for i in range(len(t) - 3)]
    return {"repetition_rate": float(np.mean([repetition_rate(t) for t in texts])) if texts else 0.0,
            "distinct_4": len(set(grams)) / len(grams) if grams else 0.0,
            "mean_length": float(np.mean([len(t) for t in texts])) if texts else 0.0}


# ---------------------------------------------------------------- truth of the dataset
def truth_info(ds: Dataset, split: str, run=None, limit: int | None = None, seed: int = 0) -> dict:
    """Entropy floor and the best n-gram baseline on `split` (cached in the `run.RunDir` if given)."""
    path = run.truth_path(split, limit, seed) if run is not None else None
    if path and path.exists():
        return json.loads(path.read_text())
    info = {}
    every = ds.strings(split)
    strings = [every[i] for i in ds.subset(split, limit, seed)]
    if ds.language is not None:
        e = ds.language.entropy()
        true_bits = -ds.language.log2_probs(strings)
        info.update({"floor_bits_per_token": e.bits_per_token, "floor_exact": e.exact,
                     "floor_stderr_bits_per_token": e.stderr_bits_per_token,
                     "split_true_bits": float(np.sum(true_bits)), "split_tokens": sum(len(ds.language.tokens(s)) + 1 for s in strings)})
        train = ds.train_strings
        lang = ds.language
        ng = best_ngram(train, strings, alphabet=lang.alphabet, tokens=None if lang.char else lang.tokens)
        info.update({"best_ngram_bits_per_token": ng["best_bits"], "best_ngram_order": ng["best_order"]})
    if path:
        try:
            atomic_write_json(path, info)
        except OSError:
            pass  # a read-only run directory: the figures were computed, only their cache is skipped
    return info


class LSTMScorer:
    """The model side of evaluation: log-probabilities and argmax predictions of given sequences, and
    samples. `OracleScorer` implements the same three methods from the true process."""

    def __init__(self, params, cfg: RunConfig, vocab):
        self.params, self.cfg, self.vocab = params, cfg, vocab

    def score(self, seqs: Ragged):
        """(log2 p per sequence, argmax next-token id at each of its len + 1 positions)."""
        return score_sequences(self.params, self.cfg, seqs)

    def sample(self, n: int, temperature: float, seed: int, max_len: int):
        """(texts, ended, lengths)."""
        key = jax.random.fold_in(jax.random.key(seed), int(round(temperature * 1000)))
        s = sample(self.params, self.cfg.model, self.vocab, n=n, key=key, temperature=temperature, max_len=max_len,
                   unk_seen=self.cfg.data.voc is not None)
        return s.texts(self.vocab), s.ended, s.lengths


class OracleScorer:
    """The true process behind the same interface: a perfect model, for testing the evaluator."""

    def __init__(self, lang, vocab):
        self.lang, self.vocab = lang, vocab

    def score(self, seqs: Ragged):
        strings = [self.vocab.decode(seqs[i]) for i in range(len(seqs))]
        log2p = self.lang.log2_probs(strings)
        preds = []
        for s in strings:
            row = []
            for allowed, can_end in self.lang.prefix_table(s):
                row.append(END_ID if can_end or not allowed else self.vocab.w2i[min(allowed)])
            preds.append(np.array(row))
        return log2p, preds

    def sample(self, n: int, temperature: float, seed: int, max_len: int):
        if temperature != 1.0:
            raise ValueError("the oracle samples at temperature 1 only")
        texts = self.lang.strings(n, seed + 10_000)
        ended = np.array([len(t) <= max_len for t in texts])
        return [t[:max_len] for t in texts], ended, np.array([min(len(t), max_len) for t in texts])


def wilson_interval(k: int, n: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval of a rate k / n (sound near 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, mid - half), min(1.0, mid + half)]


def valid_stats(lang, texts, ended, train: set | None = None) -> dict:
    """Validity of samples, the one place it is computed: a sample counts as valid only if it ended
    (drew `.end` within the length cap) and the language accepts it; `novel_rate` is the share of valid
    samples that are not training strings."""
    ended = [bool(e) for e in ended]
    # One batched truth call (a grammar scores all strings of one length together).
    ok = lang.log2_probs([x for x, e in zip(texts, ended) if e]) > -math.inf
    it = iter(ok)
    valid = [bool(next(it)) if e else False for e in ended]
    k, n = int(sum(valid)), len(valid)
    out = {"valid": valid, "valid_rate": k / max(n, 1), "valid_rate_ci": wilson_interval(k, n),
           "unterminated_rate": float(1.0 - np.mean(ended)) if n else 0.0}
    if train is not None:
        vt = [x for x, v in zip(texts, valid) if v]
        out["novel_rate"] = float(np.mean([x not in train for x in vt])) if vt else 0.0
    return out


def synthetic_sample_metrics(scorer, ds, *, n, temperatures, seed, max_len, train_set=None):
    lang = ds.language
    out = {"valid_rate": {}, "valid_rate_ci": {}, "unterminated_rate": {}}
    texts_t1 = None
    for t in temperatures:
        texts, ended, lengths = scorer.sample(n, t, seed, max_len)
        st = valid_stats(lang, texts, ended, train_set)
        out["valid_rate"][tkey(t)] = st["valid_rate"]
        out["valid_rate_ci"][tkey(t)] = st["valid_rate_ci"]
        out["unterminated_rate"][tkey(t)] = st["unterminated_rate"]
        if float(t) == 1.0:
            texts_t1, ended_t1, lengths_t1, st_t1 = texts, ended, lengths, st
    if texts_t1 is not None:
        out["_samples_t1"] = (texts_t1, st_t1["valid"], ended_t1)  # for the by-length table; not reported
        pmf, _ = lang.length_pmf(max_len)
        capped = np.where(ended_t1, np.minimum(lengths_t1, max_len), max_len)
        emp = np.bincount(capped, minlength=max_len + 1)[: max_len + 1] / len(texts_t1)
        out["length_tv"] = float(0.5 * np.abs(emp - pmf).sum())
        if train_set is not None:
            out["novel_rate"] = st_t1["novel_rate"]
    return out


def evaluate(params, cfg: RunConfig, ds: Dataset, **kw) -> dict:
    if ds.info.get("stream") is not None:
        return evaluate_stream(params, cfg, ds, **kw)
    return evaluate_scorer(LSTMScorer(params, cfg, ds.vocab), ds, **kw)


def evaluate_stream(params, cfg: RunConfig, ds: Dataset, *, split: str = "test", limit: int | None = None,
                    samples: int = 1000, temperatures=(0.0, 0.5, 1.0), max_len: int = 1000, seed: int = 0,
                    run=None) -> dict:
    """A text corpus: the split scored as one stream with the state carried, and in nanoGPT's
    64-token windows from a zero state; samples' repetition against random excerpts of the split.
    `limit` scores a random contiguous excerpt of that many tokens."""
    from .errors import UserError
    from .sample import sample as draw
    from .stream import stream_metrics

    ids = ds.info["stream"][split]
    if len(ids) < 2:
        raise UserError(f"the {split} split of {ds.spec} is empty (--split {cfg.data.split}); evaluate --split val "
                        "or train with a test fraction")
    if limit is not None and limit + 1 < len(ids):
        a = int(np.random.default_rng(seed).integers(0, len(ids) - limit))
        ids = ids[a: a + limit + 1]
    unit = ds.info["unit"]
    out = {"split": split, "unit": unit, **stream_metrics(params, cfg, ids, unit=unit),
           "unigram_bits_per_token": ds.info["unigram_bits_per_token"]}
    stats = {"repetition_rate": {}, "distinct_4": {}}
    n = min(samples, 200)  # repetition is a per-sample statistic; 200 long samples settle it
    for t in temperatures:
        key = jax.random.fold_in(jax.random.key(seed), int(round(t * 1000)))
        s = draw(params, cfg.model, ds.vocab, n=n, key=key, temperature=t, max_len=max_len, stream=True,
                 unk_seen=cfg.data.voc is not None)
        st = text_stats(s.texts(ds.vocab))
        stats["repetition_rate"][tkey(t)] = st["repetition_rate"]
        stats["distinct_4"][tkey(t)] = st["distinct_4"]
    out.update(stats)
    # Real text cut into excerpts of the samples' length, drawn at random positions.
    full = ds.info["stream"][split]
    starts = np.random.default_rng(seed + 1).integers(0, max(1, len(full) - max_len), size=n)
    ref = text_stats([ds.vocab.decode(full[a: a + max_len]) for a in starts])
    out.update({"reference_repetition_rate": ref["repetition_rate"], "reference_distinct_4": ref["distinct_4"]})
    return out


def evaluate_scorer(scorer, ds: Dataset, *, split: str = "test", limit: int | None = None,
                    samples: int = 1000, temperatures=(0.0, 0.5, 1.0), max_len: int = 1000, seed: int = 0,
                    run=None, by_length: bool = False) -> dict:
    # A random subset (stratified by label where there are labels), never the front of a sorted list.
    seqs = ds.split(split).take(ds.subset(split, limit, seed))
    log2p, preds = scorer.score(seqs)
    n_tokens = int((seqs.lengths + 1).sum())
    ce = float(-log2p.sum() / n_tokens)
    out = {"split": split, "n_sequences": len(seqs), "n_tokens": n_tokens, "ce_bits_per_token": ce,
           "perplexity": float(2.0 ** ce)}
    if ds.language is not None:
        lang = ds.language
        info = truth_info(ds, split, run, limit, seed)
        ent = info["split_true_bits"] / info["split_tokens"]
        out.update({"entropy_bits_per_token": ent, "kl_bits_per_token": ce - ent,
                    "floor_bits_per_token": info["floor_bits_per_token"], "floor_exact": info["floor_exact"],
                    "floor_stderr_bits_per_token": info.get("floor_stderr_bits_per_token", 0.0),
                    "best_ngram_bits_per_token": info["best_ngram_bits_per_token"],
                    "best_ngram_order": info["best_ngram_order"]})
        ok = total = 0
        i2w = ds.vocab.i2w
        all_legal = np.zeros(len(seqs), bool)
        for j in range(len(seqs)):
            s = ds.vocab.decode(seqs[j])
            good = [bool((p == END_ID and can_end) or (p >= 4 and i2w[p] in allowed))
                    for (allowed, can_end), p in zip(lang.prefix_table(s), preds[j])]
            total += len(good)
            ok += sum(good)
            all_legal[j] = all(good)
        out["prefix_valid_rate"] = ok / max(total, 1)
        temps = tuple(temperatures) + ((1.0,) if by_length and 1.0 not in map(float, temperatures) else ())
        out.update(synthetic_sample_metrics(scorer, ds, n=samples, temperatures=temps, seed=seed,
                                            max_len=max_len, train_set=set(ds.train_strings or ())))
        t1 = out.pop("_samples_t1", None)
        if by_length:
            out["by_length"] = length_table_of(lang, seqs, log2p, all_legal, t1)
    else:
        out["bits_per_char"] = ce  # the end marker counts as one character, like the n-gram's '|'
        stats = {"repetition_rate": {}, "distinct_4": {}, "mean_sample_length": {}, "ended_rate": {}}
        for t in temperatures:
            texts, ended, _ = scorer.sample(samples, t, seed, max_len)
            st = text_stats(texts)
            stats["repetition_rate"][tkey(t)] = st["repetition_rate"]
            stats["distinct_4"][tkey(t)] = st["distinct_4"]
            stats["mean_sample_length"][tkey(t)] = st["mean_length"]
            stats["ended_rate"][tkey(t)] = float(np.mean(ended))
        out.update(stats)
        ref_idx = np.random.default_rng(seed).choice(len(seqs), size=min(samples, len(seqs)), replace=False)
        # Real reviews cut at the same length cap as the samples, so the statistics compare like with like.
        ref = text_stats([ds.vocab.decode(seqs[int(i)])[:max_len] for i in ref_idx])
        out.update({"reference_repetition_rate": ref["repetition_rate"], "reference_distinct_4": ref["distinct_4"],
                    "reference_mean_length": ref["mean_length"]})
    return out


def length_table_of(lang, seqs: Ragged, log2p: np.ndarray, all_legal: np.ndarray, samples_t1) -> list[dict]:
    """The evaluation split by string length: per length, the model's bits (summed over the strings,
    end marker included, so the rows decompose the split's cross-entropy), the true conditional
    entropy H(S | |S| = n) and the per-length KL gap E[log p(s)/q(s) | n], per string and per token,
    the share of strings whose every greedy next symbol is legal, and the valid rate of the model's
    T = 1 samples of that length."""
    lengths = seqs.lengths
    top = int(lengths.max()) if len(lengths) else 0
    truth = {r["length"]: r for r in lang.by_length(top)}
    texts, valid, ended = samples_t1 if samples_t1 is not None else ([], [], [])
    s_len: dict[int, list[bool]] = {}
    for x, v, e in zip(texts, valid, ended):
        if e:
            s_len.setdefault(len(lang.tokens(x)), []).append(bool(v))
    rows = []
    for n in sorted(set(lengths.tolist())):
        sel = lengths == n
        k = int(sel.sum())
        bits = float(-log2p[sel].sum())
        t = truth.get(n)
        row = {"length": n, "n_strings": k, "n_tokens": k * (n + 1), "model_bits": bits}
        if t is not None and t["p_length"] > 0:
            true_per_string = t["entropy_bits"] - math.log2(t["p_length"])  # E[-log2 p(s) | n]
            kl = bits / k - true_per_string
            row.update({"p_length": t["p_length"], "entropy_bits": t["entropy_bits"], "entropy_exact": t["exact"],
                        "entropy_stderr": t["stderr"], "kl_bits_per_string": kl, "kl_bits_per_token": kl / (n + 1)})
        else:
            row.update({"p_length": 0.0, "entropy_bits": None, "kl_bits_per_string": None, "kl_bits_per_token": None})
        drawn = s_len.get(n, [])
        row.update({"greedy_legal_rate": float(all_legal[sel].mean()),
                    "n_samples": len(drawn), "sample_valid_rate": float(np.mean(drawn)) if drawn else None})
        rows.append(row)
    return rows


def plot_by_length(rows: list[dict], path, train_lengths: tuple[int, int] | None = None) -> None:
    """The per-length KL gap against length, the training lengths shaded (by_length.png)."""
    from .plots import _save, plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    ok = [r for r in rows if r.get("kl_bits_per_token") is not None]
    a1.plot([r["length"] for r in ok], [r["kl_bits_per_token"] for r in ok], "o-", ms=3)
    a1.axhline(0, color="k", lw=0.8)
    a1.set(xlabel="string length (symbols)", ylabel="KL gap (bits/token)", title="Gap to the true distribution by length")
    a2.plot([r["length"] for r in rows], [r["greedy_legal_rate"] for r in rows], "o-", ms=3, label="greedy next symbol legal")
    sv = [r for r in rows if r.get("sample_valid_rate") is not None]
    a2.plot([r["length"] for r in sv], [r["sample_valid_rate"] for r in sv], "s", ms=3, label="samples valid (T=1)")
    a2.set(xlabel="string length (symbols)", ylabel="share", ylim=(-0.02, 1.02), title="Legal predictions and valid samples")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        if train_lengths:
            ax.axvspan(train_lengths[0], train_lengths[1], color="g", alpha=0.12, label="training lengths")
    _save(fig, path)


# ---------------------------------------------------------------- per-epoch evaluation during training
class EpochEvaluator:
    """Called after each epoch: KL on the validation split, valid rates at T = 0 and 1, and the
    course's ten samples per temperature, scored, in samples/epoch-N.jsonl (for a text corpus, a few
    samples of up to 300 tokens, primed as `seqgen sample` primes them)."""

    def __init__(self, cfg: RunConfig, ds: Dataset, run, *, framed: bool = True, info: dict | None = None):
        """run: the `run.RunDir` to write truth and samples into (None on non-primary processes).
        framed: the model was trained on strings framed by `.start`/`.end` (not a raw text stream).
        info: the validation split's truth when already computed (a sweep's members share it)."""
        self.cfg, self.ds, self.run, self.framed = cfg, ds, run, framed
        if info is None:
            info = truth_info(ds, "val", run) if ds.language is not None else {}
        self.info = info
        if run is not None:
            atomic_write_json(run.truth_path(), self.info)

    def sample_texts(self, params, n: int, temperature: float, seed: int, max_len: int) -> list[str]:
        key = jax.random.fold_in(jax.random.key(seed), int(round(temperature * 1000)))
        s = sample(params, self.cfg.model, self.ds.vocab, n=n, key=key, temperature=temperature, max_len=max_len,
                   unk_seen=self.cfg.data.voc is not None, stream=not self.framed)
        return s.texts(self.ds.vocab)

    def __call__(self, params, epoch: int, val_ce: float) -> dict:
        ds, cfg = self.ds, self.cfg
        out = {}
        rows = []
        if ds.language is not None:
            ent = self.info["split_true_bits"] / self.info["split_tokens"]
            out["kl_bits_per_token"] = val_ce - ent
            scorer = LSTMScorer(params, cfg, ds.vocab)
            for t in (0.0, 1.0):
                texts, ended, _ = scorer.sample(cfg.train.eval_samples, t, epoch, 200)
                st = valid_stats(ds.language, texts, ended)
                valid = st["valid"]
                out[f"valid_rate_{tkey(t)}"] = st["valid_rate"]
                for x, e, v in list(zip(texts, ended, valid))[:10]:
                    lp = ds.language.log2_prob(x) if v else None
                    rows.append({"temperature": t, "text": x, "ended": bool(e), "valid": v, "log2_prob": lp})
        elif not self.framed:
            for t, n in ((0.0, 1), (1.0, 4)):
                rows += [{"temperature": t, "text": x} for x in self.sample_texts(params, n, t, epoch, 300)]
        else:
            scorer = LSTMScorer(params, cfg, ds.vocab)
            for t in (0.0, 1.0):
                texts, ended, _ = scorer.sample(10, t, epoch, 300)
                rows += [{"temperature": t, "text": x, "ended": bool(e)} for x, e in zip(texts, ended)]
        if self.run is not None:
            self.run.write_samples(epoch, rows)
        return out
