"""Sampler correctness and the truth-based evaluator."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqgen_jax.config import ModelConfig, RunConfig
from seqgen_jax.data import build_dataset
from seqgen_jax.data.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab
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
        lg[[PAD_ID, START_ID, UNK_ID]] = -np.inf
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
    lg[[PAD_ID, START_ID, UNK_ID]] = -np.inf
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


def test_unk_is_never_drawn_unless_the_data_could_hold_it():
    params = init_params(CFG, 0)
    params["out"]["b"] = params["out"]["b"].at[UNK_ID].add(8.0)  # .unk is by far the most likely
    s = sample(params, CFG, VOCAB, n=64, key=jax.random.key(0), temperature=1.0, max_len=5)
    assert not (s.tokens == UNK_ID).any()
    s = sample(params, CFG, VOCAB, n=64, key=jax.random.key(0), temperature=1.0, max_len=5, unk_seen=True)
    assert (s.tokens == UNK_ID).mean() > 0.5


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


def _greedy_reference(params, prefix, steps, width=32):
    """The course's loop: re-run the whole prefix at every step and take the argmax. The prefix is padded
    to a fixed width (an LSTM never looks ahead, so the padding cannot change the logits read at the
    prefix's last position), so the loop compiles once."""
    run = jax.jit(lambda p, toks, i: apply(p, toks, cfg=CFG)[0][0, i])
    seq = list(prefix)
    for _ in range(steps):
        lg = np.asarray(run(params, jnp.asarray([seq + [PAD_ID] * (width - len(seq))]), len(seq) - 1)).copy()
        lg[[PAD_ID, START_ID, UNK_ID]] = -np.inf
        nxt = int(np.argmax(lg))
        if nxt == END_ID:
            break
        seq.append(nxt)
    return seq[len(prefix):]


def test_prompt_conditions_the_model():
    """The continuation after a prompt is the model's continuation of that prefix, not of `.start`:
    `Samples.texts` prepends the prompt, so only the drawn tokens themselves can show this."""
    params = init_params(CFG, 3)
    params["out"]["w"] = params["out"]["w"] * 6  # decisive, and not ending at once
    base = _greedy_reference(params, [START_ID], 12)
    found = 0
    for prompt in ("((", ")", "()("):
        s = sample(params, CFG, VOCAB, n=2, key=jax.random.key(0), temperature=0.0, prompt=prompt, max_len=12)
        drawn = [int(t) for t in s.tokens[0, :s.lengths[0]]]
        want = _greedy_reference(params, [START_ID] + [int(i) for i in VOCAB.encode(prompt)], 12)
        assert drawn == want, prompt
        found += want != base
    assert found >= 1, "no prompt changed the greedy continuation: the check above could not fail"


def test_evaluator_against_a_known_wrong_model():
    """An oracle for brackets(p=0.3) scored on data from brackets(p=0.4375): its CE, KL and the share of
    samples cut by the length cap are known in closed form, so the evaluator's numbers can be checked."""
    from seqgen_jax.data import get_language

    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 2000, "data.n_test": 3000})
    ds = build_dataset(cfg.data)
    wrong = get_language("brackets:p=0.3")
    out = evaluate_scorer(OracleScorer(wrong, ds.vocab), ds, split="test", samples=2000,
                          temperatures=(1.0,), max_len=6)
    # Cross-entropy of the test strings under the wrong process, computed here string by string.
    test = ds.strings("test")
    nll_bits = -sum(wrong.log_prob(t) for t in test) / math.log(2)
    n_tok = sum(len(t) + 1 for t in test)
    assert out["ce_bits_per_token"] == pytest.approx(nll_bits / n_tok, rel=1e-6)
    assert out["kl_bits_per_token"] == pytest.approx(out["ce_bits_per_token"] - out["entropy_bits_per_token"], abs=1e-9)
    assert out["kl_bits_per_token"] > 0.01  # p = 0.3 is measurably not p = 0.4375
    assert out["perplexity"] == pytest.approx(2 ** out["ce_bits_per_token"], rel=1e-9)
    # A walk from depth 1 ends after 2k+1 symbols with probability C_k p^k q^(k+1): P(length <= 6) =
    # q + p q^2 + 2 p^2 q^3. Longer samples hit the cap of 6 and count as unterminated, not valid.
    p, q = 0.3, 0.7
    cut = 1 - (q + p * q ** 2 + 2 * p ** 2 * q ** 3)
    v, u = out["valid_rate"]["1.0"], out["unterminated_rate"]["1.0"]
    assert u == pytest.approx(cut, abs=4 * math.sqrt(cut * (1 - cut) / 2000))
    assert v == pytest.approx(1 - u)
    lo, hi = out["valid_rate_ci"]["1.0"]
    assert lo < v < hi and 0.01 < hi - lo < 0.04


def test_prefix_valid_rate_of_a_model_that_always_predicts_the_end():
    """Brackets strings may end only after their last symbol, so a model whose argmax is always `.end`
    is right at exactly one of the L + 1 positions of each string."""

    class AlwaysEnd(OracleScorer):
        def score(self, seqs):
            log2p, preds = super().score(seqs)
            return log2p, [np.full_like(p, END_ID) for p in preds]

    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 200, "data.n_test": 400})
    ds = build_dataset(cfg.data)
    out = evaluate_scorer(AlwaysEnd(ds.language, ds.vocab), ds, split="test", samples=10, temperatures=(1.0,),
                          max_len=50)
    test = ds.strings("test")
    assert out["prefix_valid_rate"] == pytest.approx(len(test) / sum(len(t) + 1 for t in test))


def test_evaluator_rates_catch_invalid_and_copied_samples():
    """A scorer whose samples are half invalid and half copies of training strings."""
    from seqgen_jax.evaluate import valid_stats

    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 500, "data.n_test": 100})
    ds = build_dataset(cfg.data)
    train = ds.train_strings
    texts = [train[i] for i in range(50)] + ["())" + "(" * i for i in range(50)]
    ended = [True] * 90 + [False] * 10  # the last ten invalid ones also never ended
    st = valid_stats(ds.language, texts, ended=ended, train=set(train))
    assert st["valid_rate"] == pytest.approx(0.5) and st["unterminated_rate"] == pytest.approx(0.1)
    assert st["novel_rate"] == pytest.approx(0.0)  # the valid ones are all copies
    st2 = valid_stats(ds.language, ["(())", "()"] * 5, ended=[True] * 10, train={"()"})
    assert st2["novel_rate"] == pytest.approx(0.5) and st2["valid_rate"] == 1.0
    lo, hi = st2["valid_rate_ci"]
    assert hi == pytest.approx(1.0) and 0.70 < lo < 0.74  # Wilson 95% for 10 of 10: [0.722, 1]


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


def test_scoring_sequences_longer_than_the_training_budget_matches_a_plain_forward_pass():
    """Whole sequences longer than the run's token budget (IMDb reviews under a 2,048-token budget)
    are scored with one bucket plan of their own; every log-probability equals the one a forward pass
    of that sequence alone gives."""
    from seqgen_jax.data.vocab import Ragged
    from seqgen_jax.evaluate import score_sequences

    params = _sharp_params(seed=3)
    cfg = RunConfig(model=CFG).override(**{"train.max_tokens": 64})
    rng = np.random.default_rng(0)
    strings = ["".join(rng.choice(["(", ")"], size=int(n))) for n in (3, 70, 150, 41, 260, 9)]
    log2p, preds = score_sequences(params, cfg, Ragged.from_strings(strings, VOCAB))
    for s, got, pr in zip(strings, log2p, preds):
        ids = np.concatenate([[START_ID], VOCAB.encode(s), [END_ID]])
        logits, _ = apply(params, jnp.asarray(ids[None, :-1]), None, cfg=CFG)
        lp = jax.nn.log_softmax(np.asarray(logits[0], np.float64))
        want = sum(lp[t, ids[t + 1]] for t in range(len(ids) - 1)) / math.log(2)
        assert got == pytest.approx(float(want), rel=1e-5, abs=1e-4)
        assert pr.tolist() == np.argmax(lp, axis=-1).tolist()


def test_framed_stream_brute_force():
    from seqgen_jax.data.vocab import Ragged

    rng = np.random.default_rng(1)
    seqs = [rng.integers(4, 9, size=int(n)).tolist() for n in (0, 3, 1, 5)]
    r = Ragged(np.concatenate([np.array(s, np.int32) for s in seqs]),
               np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64))
    order = np.array([2, 0, 3, 1])
    want = [t for i in order for t in [START_ID, *seqs[i], END_ID]]
    assert r.framed(order).tolist() == want
    assert r.framed().tolist() == [t for s in seqs for t in [START_ID, *s, END_ID]]
    assert r.framed(order, end=False).tolist() == [t for i in order for t in [START_ID, *seqs[i]]]
