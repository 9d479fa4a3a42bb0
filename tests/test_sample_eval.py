"""Sampler correctness and the truth-based evaluator."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqgen_jax.config import ModelConfig, RunConfig
from seqgen_jax.data import build_dataset
from seqgen_jax.data.vocab import END_ID, PAD_ID, START_ID, Vocab
from seqgen_jax.evaluate import OracleScorer, evaluate, evaluate_scorer, repetition_rate, text_stats
from seqgen_jax.model import apply, init_params
from seqgen_jax.sample import padded_n, sample

CFG = ModelConfig(vocab_size=6, embed=8, hidden=16)
VOCAB = Vocab.from_symbols("()")


def _sharp_params(seed=0, scale=3.0):
    """Random weights scaled up so the model has clear preferences (and still ends sometimes)."""
    p = init_params(CFG, seed)
    p["out"]["w"] = p["out"]["w"] * scale
    p["out"]["b"] = p["out"]["b"].at[END_ID].add(1.0)
    return p


def test_greedy_equals_stepwise_argmax_reference():
    params = _sharp_params()
    s = sample(params, CFG, VOCAB, n=3, key=jax.random.key(0), temperature=0.0, max_len=30)
    # Reference: re-run the whole prefix at every step (the course's loop) and take the argmax.
    seq = [START_ID]
    for _ in range(31):
        logits, _ = apply(params, jnp.asarray([seq]), cfg=CFG)
        lg = np.asarray(logits[0, -1]).copy()
        lg[[PAD_ID, START_ID]] = -np.inf
        nxt = int(np.argmax(lg))
        if nxt == END_ID:
            break
        seq.append(nxt)
    want = VOCAB.decode(seq[1:31])
    assert s.texts(VOCAB) == [want] * 3
    assert bool(s.ended[0]) == (len(seq) <= 31 and nxt == END_ID)


def test_temperature_sampling_matches_model_distribution():
    """Chi-square of the first two drawn tokens against the model's own next-token probabilities."""
    params = _sharp_params(1, scale=1.0)
    T = 0.7
    n = 4000
    s = sample(params, CFG, VOCAB, n=n, key=jax.random.key(5), temperature=T, max_len=3)
    logits, _ = apply(params, jnp.asarray([[START_ID]]), cfg=CFG)
    lg = np.asarray(logits[0, -1]) / T
    lg[[PAD_ID, START_ID]] = -np.inf
    p = np.exp(lg - lg.max())
    p /= p.sum()
    first = s.tokens[:, 0]
    counts = np.bincount(first, minlength=6)
    support = p > 1e-3
    expected = n * p[support]
    chi2 = ((counts[support] - expected) ** 2 / expected).sum()
    assert counts[~support].sum() == 0
    assert chi2 < 20.5  # 99.9% quantile for up to 4 degrees of freedom: 18.5


def test_top_k_restricts_support_and_ended_never_continues():
    params = _sharp_params(2, scale=0.3)  # nearly uniform: every token is likely
    s = sample(params, CFG, VOCAB, n=500, key=jax.random.key(1), temperature=1.0, top_k=1, max_len=20)
    g = sample(params, CFG, VOCAB, n=1, key=jax.random.key(9), temperature=0.0, max_len=20)
    assert set(s.texts(VOCAB)) == set(g.texts(VOCAB))  # top-1 sampling is greedy
    s = sample(params, CFG, VOCAB, n=500, key=jax.random.key(1), temperature=1.0, max_len=20)
    for row, L, e in zip(s.tokens, s.lengths, s.ended):
        ends = np.flatnonzero(row == END_ID)
        if e:
            assert ends[0] == L and (row[L + 1:] == PAD_ID).all()
        else:
            assert L == 20 and len(ends) == 0


def test_same_seed_same_samples_and_no_recompile_for_new_n_or_temperature():
    from seqgen_jax.sample import _sample

    params = _sharp_params()
    a = sample(params, CFG, VOCAB, n=10, key=jax.random.key(3), temperature=1.0, max_len=50)
    b = sample(params, CFG, VOCAB, n=10, key=jax.random.key(3), temperature=1.0, max_len=50)
    c = sample(params, CFG, VOCAB, n=10, key=jax.random.key(4), temperature=1.0, max_len=50)
    assert a.texts(VOCAB) == b.texts(VOCAB) != c.texts(VOCAB)
    before = _sample._cache_size()
    sample(params, CFG, VOCAB, n=13, key=jax.random.key(3), temperature=0.3, top_k=2, max_len=50)
    sample(params, CFG, VOCAB, n=16, key=jax.random.key(3), temperature=0.0, max_len=50)
    assert _sample._cache_size() == before  # 10, 13, 16 share the padded shape 16
    assert padded_n(13) == padded_n(16) == 16


def test_prompt_is_continued():
    params = _sharp_params()
    s = sample(params, CFG, VOCAB, n=4, key=jax.random.key(0), temperature=1.0, prompt="((", max_len=10)
    assert all(t.startswith("((") for t in s.texts(VOCAB))


def test_oracle_evaluator_reports_no_gap_and_full_validity():
    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 2000, "data.n_test": 500})
    ds = build_dataset(cfg.data)
    out = evaluate_scorer(OracleScorer(ds.language, ds.vocab), ds, split="test", samples=2000,
                          temperatures=(1.0,), max_len=10_000)
    assert out["kl_bits_per_token"] == pytest.approx(0.0, abs=1e-9)
    assert out["valid_rate"]["1.0"] == 1.0 and out["unterminated_rate"]["1.0"] == 0.0
    assert out["prefix_valid_rate"] == 1.0
    assert out["length_tv"] < 0.06  # sampling noise of 2,000 draws only
    assert 0 <= out["novel_rate"] <= 1
    assert out["best_ngram_bits_per_token"] > out["entropy_bits_per_token"]


def test_uniform_model_has_perplexity_of_vocabulary_size():
    cfg = RunConfig().override(**{"data.name": "ndfa", "data.n_train": 500, "data.n_test": 200,
                                  "model.vocab_size": 15})
    ds = build_dataset(cfg.data)
    params = init_params(cfg.model, 0)
    params["out"] = {"w": jnp.zeros_like(params["out"]["w"]), "b": jnp.zeros_like(params["out"]["b"])}
    out = evaluate(params, cfg, ds, split="test", samples=50, temperatures=(0.0, 1.0), max_len=50)
    assert out["perplexity"] == pytest.approx(len(ds.vocab), rel=1e-5)
    assert out["kl_bits_per_token"] == pytest.approx(math.log2(15) - out["entropy_bits_per_token"], rel=1e-5)
    assert set(out["valid_rate"]) == {"0.0", "1.0"}


def test_text_statistics():
    assert repetition_rate("abcdefgh" * 3) == 1.0
    assert repetition_rate("the quick brown fox jumps over") == 0.0
    assert repetition_rate("xx" + "abcdefgh" * 3) == pytest.approx(24 / 26)
    st = text_stats(["abcdabcd", "wxyz"])
    assert st["distinct_4"] == pytest.approx(5 / 6) and st["mean_length"] == 6
