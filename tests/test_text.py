"""`text:PATH` corpora: splits, vocabulary, cache, and truncated-BPTT training and scoring checked
against a plain-autodiff LSTM run over the whole stream (`test_lstm_backends.ref_apply`)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_lstm_backends import ref_apply

from seqgen_jax.config import DataConfig, RunConfig
from seqgen_jax.data import build_dataset
from seqgen_jax.data.vocab import END_ID, UNK_ID
from seqgen_jax.errors import UserError
from seqgen_jax.model import init_params
from seqgen_jax.step import StepSpec, step_fn
from seqgen_jax.stream import score_stream, score_windows, zero_carry

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQGEN_TEXT_CACHE", str(tmp_path / "cache"))


def _ds(spec, **kw):
    return build_dataset(DataConfig(name=spec, **kw))


def test_contiguous_split_and_train_only_vocabulary(tmp_path):
    f = tmp_path / "t.txt"
    text = "abcab" * 20 + "zz" + "abcabcabca"  # 'z' first appears after the first 90% (100 of 112)
    f.write_text(text)
    ds = _ds(f"text:{f}", split="0.9,0.1,0")
    n = len(text)
    st = ds.info["stream"]
    assert len(st["train"]) == int(0.9 * n) and len(st["val"]) == n - int(0.9 * n) and len(st["test"]) == 0
    assert "z" not in ds.vocab.i2w
    assert ds.vocab.decode(st["train"]) == text[: int(0.9 * n)]
    val = ds.vocab.decode([i if i != UNK_ID else ds.vocab.w2i["a"] for i in st["val"]])  # .unk decodes as text
    assert list(st["val"]).count(UNK_ID) == 2 and len(val) == n - int(0.9 * n)
    ds3 = _ds(f"text:{f}", split="0.5,0.25,0.25")
    assert [len(ds3.info["stream"][k]) for k in ("train", "val", "test")] == [n // 2, n // 4, n - n // 2 - n // 4]


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare is not beside the checkout")
def test_shakespeare_split_is_nanogpts():
    assert hashlib.sha256(SHAKESPEARE.read_bytes()).hexdigest().startswith("86c4e6aa9db7c042")
    ds = _ds(f"text:{SHAKESPEARE}", split="0.9,0.1,0")
    st = ds.info["stream"]
    assert (len(st["train"]), len(st["val"])) == (1_003_854, 111_540)
    text = SHAKESPEARE.read_text()
    assert ds.vocab.decode(st["val"][:500]) == text[1_003_854: 1_003_854 + 500]
    assert len(ds.vocab) == 4 + len(set(text[:1_003_854]))


def test_folder_documents_end_markers_glob_and_words(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("the cat sat")
    (d / "a.txt").write_text("a dog ran")
    (d / "sub" / "c.txt").write_text("the dog sat")
    (d / "skip.md").write_text("not text")
    ds = _ds(f"text:{d}", split="0.6,0.4,0", char=False)
    ids = np.concatenate([ds.info["stream"]["train"], ds.info["stream"]["val"]])
    assert ds.info["n_docs"] == 3 and list(ids).count(END_ID) == 3  # one .end after each document
    words = [ds.vocab.i2w[i] if i != UNK_ID else "?" for i in ids]
    assert words[:4] == ["a", "dog", "ran", ".end"]  # sorted file order: a.txt first
    g = _ds(f"text:{d}/*.txt", split="0.6,0.4,0", char=False)
    assert g.info["n_docs"] == 2
    capped = _ds(f"text:{d}", split="0.6,0.4,0", char=False, voc=2)
    assert len(capped.vocab) == 6 and set(capped.vocab.i2w[4:]) <= {"dog", "the", "a", "ran", "cat", "sat"}


def test_cache_is_reused_and_a_damaged_cache_is_rebuilt(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world\n" * 100)
    a = _ds(f"text:{f}")
    cache = tmp_path / "cache" / a.info["cache"]  # info["cache"] is the content key
    ids = cache / "ids.npy"
    assert ids.exists()
    b = _ds(f"text:{f}")
    assert np.array_equal(a.info["stream"]["train"], b.info["stream"]["train"])
    ids.write_bytes(ids.read_bytes()[:100])  # truncated
    c = _ds(f"text:{f}")
    assert np.array_equal(a.info["stream"]["train"], c.info["stream"]["train"])
    f.write_text("other text\n" * 100)  # new contents, new key
    assert _ds(f"text:{f}").info["cache"] != a.info["cache"]


def test_a_window_longer_than_the_stream_is_one_line(tmp_path):
    from conftest import run_cli

    f = tmp_path / "small.txt"
    f.write_text("hello world\n" * 50)
    rc, out, err = run_cli("train", f"text:{f}", "--run-dir", tmp_path / "r", "--chunk", "100000")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "lower --chunk" in err, err[-2000:]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("spec,msg", [("text:/nonexistent/x.txt", "no such file"), ("text:", "needs a path")])
def test_bad_text_specs(spec, msg):
    with pytest.raises(UserError, match=msg):
        _ds(spec)


def test_bad_split_and_non_utf8(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abc" * 50)
    for split in ("0.9,0.1", "0.9,0.2,0", "1,0,0", "a,b,c"):
        with pytest.raises(UserError, match="--split"):
            _ds(f"text:{f}", split=split)
    g = tmp_path / "latin.txt"
    g.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        _ds(f"text:{g}")


# ---------------------------------------------------------------- training and scoring vs a reference
def _cfg(carry: bool, V=9, layers=2):
    return RunConfig().override(**{"model.vocab_size": V, "model.embed": 5, "model.hidden": 6, "model.layers": layers,
                                   "data.carry_state": carry, "data.chunk": 4})


def _ref_nll(params, window, h0, c0):
    logits, hT, cT = ref_apply(params, window[:, :-1], h0, c0)
    lp = jax.nn.log_softmax(logits)
    tgt = window[:, 1:]
    return -jnp.take_along_axis(lp, tgt[..., None], -1).sum(), (hT, cT)


@pytest.mark.parametrize("carry", [True, False])
def test_carried_state_training_equals_an_unrolled_reference(carry):
    """Two windows with SGD(lr=1): the second update must be minus the mean gradient of the second
    window's loss from the state the first window ended in (or from zeros without carry), computed
    by plain autodiff on the parameters after the first update."""
    cfg = _cfg(carry)
    chunk, B = 4, 3
    rng = np.random.default_rng(0)
    data = rng.integers(4, 9, size=(B, 3 * chunk + 1)).astype(np.int32)
    p0 = init_params(cfg.model, 0)
    tx = optax.sgd(1.0)
    step = jax.jit(step_fn(cfg, tx, StepSpec(window=chunk, carry=carry)), donate_argnums=(0,))
    state = {"params": p0, "opt_state": tx.init(p0), "step": jnp.zeros((), jnp.int32),
             "acc": {k: jnp.zeros(()) for k in ("nll", "tokens", "gn_sum", "gn_sq", "gn_max", "steps")},
             "carry": zero_carry(cfg, B)}
    p0_copy = jax.tree.map(np.array, p0)
    state, _ = step(state, jnp.asarray(data), jnp.int32(0))
    p1 = jax.tree.map(np.array, state["params"])
    state, _ = step(state, jnp.asarray(data), jnp.int32(chunk))
    p2 = jax.tree.map(np.array, state["params"])

    z = jnp.zeros((cfg.model.layers, B, cfg.model.hidden))
    w1, w2 = jnp.asarray(data[:, :chunk + 1]), jnp.asarray(data[:, chunk:2 * chunk + 1])
    g1 = jax.grad(lambda p: _ref_nll(p, w1, z, z)[0])(p0_copy)
    _, (h1, c1) = _ref_nll(p0_copy, w1, z, z)
    h0, c0 = (h1, c1) if carry else (z, z)
    g2 = jax.grad(lambda p: _ref_nll(p, w2, h0, c0)[0])(p1)
    n = B * chunk
    for got, p_before, g in ((p1, p0_copy, g1), (p2, p1, g2)):
        for a, b, gg in zip(jax.tree.leaves(got), jax.tree.leaves(p_before), jax.tree.leaves(g)):
            np.testing.assert_allclose(a - b, -np.asarray(gg) / n, rtol=2e-4, atol=2e-6)
    if carry:  # the carried state matters: from zeros the second update would differ
        g_zero = jax.grad(lambda p: _ref_nll(p, w2, z, z)[0])(p1)
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(g_zero), jax.tree.leaves(g2)))
        assert diff > 1e-4


def test_stream_and_window_scores_equal_the_reference():
    cfg = _cfg(True, layers=1)
    params = init_params(cfg.model, 3)
    ids = np.random.default_rng(1).integers(4, 9, size=1000).astype(np.int32)
    z = jnp.zeros((1, 1, cfg.model.hidden))
    want, _ = _ref_nll(params, jnp.asarray(ids)[None, :], z, z)  # one pass over the whole stream
    got, n = score_stream(params, cfg, ids, block=64)
    assert n == len(ids) - 1
    np.testing.assert_allclose(got, float(want), rtol=1e-5)
    # Cut into segments: every target still counted once, each segment from a zero state.
    got4, n4 = score_stream(params, cfg, ids, block=32, min_segment=250)
    L = -(-999 // 3)  # 3 segments of 333 targets
    L = -(-L // 32) * 32
    segs = [ids[s * L: s * L + L + 1] for s in range(-(-999 // L))]
    want4 = sum(float(_ref_nll(params, jnp.asarray(s)[None, :], z, z)[0]) for s in segs if len(s) > 1)
    assert n4 == 999
    np.testing.assert_allclose(got4, want4, rtol=1e-5)
    wn, wcount = score_windows(params, cfg, ids, window=64, batch=4)
    z15 = jnp.zeros((1, 15, cfg.model.hidden))
    rows = np.stack([ids[i * 64: i * 64 + 65] for i in range(999 // 64)])
    want_w, _ = _ref_nll(params, jnp.asarray(rows), z15, z15)
    assert wcount == 15 * 64
    np.testing.assert_allclose(wn, float(want_w), rtol=1e-5)


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "seqgen_jax", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_text_train_sample_eval_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    text = "\n".join(" ".join(rng.choice(words, size=6)) for _ in range(2000)) + "\n"
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    run = tmp_path / "run"
    p = _run("train", f"text:{f.name}", "--run-dir", str(run), "--epochs", "2", "--hidden", "32", "--embed", "16",
             "--max-tokens", "1024", "--chunk", "32", "--sample-every", "40", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "sample at step 40" in p.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["name"] == f"text:{f}"  # absolute: the run works from any folder
    assert cfg["data"]["split"] == "0.9,0.05,0.05" and cfg["data"]["carry_state"] is True
    p = _run("eval", str(run), "--json", "--samples", "20", "--max-len", "100", "--temperatures", "0,1")
    assert p.returncode == 0, p.stderr
    ev = json.loads(p.stdout)
    assert ev["bits_per_char"] < 0.7 * ev["unigram_bits_per_token"]  # it learned far more than frequencies
    assert abs(ev["nats_per_char"] - ev["bits_per_char"] * np.log(2)) < 1e-9
    assert abs(ev["perplexity"] - 2 ** ev["bits_per_char"]) < 1e-6
    assert ev["n_tokens"] == len(text) - int(len(text) * 0.9) - int(len(text) * 0.05) - 1
    p = _run("sample", str(run), "--n", "3", "--max-len", "60", "--temperature", "0.5")
    assert p.returncode == 0, p.stderr
    out = p.stdout.split()
    assert sum(w in words for w in out) >= 0.8 * len(out)


def test_a_text_corpus_trains_on_two_devices_and_resumes_to_the_same_metrics(tmp_path):
    """--devices 2 reaches text corpora (the stream split over two host devices), and a run stopped
    mid-epoch by the clock resumes to exactly the uninterrupted run's records."""
    import types

    import jax

    import seqgen_jax.train as T
    from seqgen_jax.train import train

    assert jax.device_count() >= 2
    f = tmp_path / "t.txt"
    rng = np.random.default_rng(0)
    f.write_text("\n".join(" ".join(rng.choice(["ab", "cd", "efg"], size=5)) for _ in range(400)))
    cfg = RunConfig().override(**{"data.name": f"text:{f}", "data.chunk": 16, "train.max_tokens": 256,
                                  "model.embed": 8, "model.hidden": 16, "train.epochs": 2, "train.devices": "2",
                                  "train.schedule": "constant", "train.log_every": 2, "train.steps_per_call": 4})
    logs = []
    train(cfg, tmp_path / "a", log=logs.append)
    assert "on 2 cpu device(s)" in logs[0]

    clock = {"t": 0.0}

    def tick():
        clock["t"] += 1.0
        return clock["t"]

    real = T.time
    T.time = types.SimpleNamespace(time=tick)
    try:
        train(cfg.override(**{"train.max_time": 6.0}), tmp_path / "b", log=logs.append)
    finally:
        T.time = real
    assert any("--max-time reached" in l for l in logs)
    train(cfg, tmp_path / "b", resume=True, log=lambda s: None)

    def recs(d):
        keep = ("step", "epoch", "loss", "train_loss", "val_ce_bits_per_token", "grad_norm", "grad_norm_mean")
        return [{k: m[k] for k in keep if k in m} for m in
                (json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()) if "event" not in m]

    a, b = recs(tmp_path / "a"), recs(tmp_path / "b")
    assert len(a) == len(b) and any("epoch" not in r for r in a)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-6), (ra, rb, k)
