"""Every LSTM backend against an independent reference: a plain `lax.scan` LSTM with standard sigmoids,
`params[...][tokens]` lookups and ordinary autodiff, written here and sharing no code with seqgen_jax's
model (no custom VJP, no gate scaling, no folded embedding, no one-hot lookups)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqgen_jax import lstm
from seqgen_jax.config import ModelConfig
from seqgen_jax.errors import UserError
from seqgen_jax.lstm import pallas as lstm_pallas
from seqgen_jax.lstm import scan as lstm_scan
from seqgen_jax import model as model_mod
from seqgen_jax.model import apply, init_params

BACKENDS = ("scan", "pallas")  # cudnn needs a GPU: benchmarks/gpu_round.py checks it there


def ref_recurrence(gx, w_hh, h0, c0, lengths):
    """gx (T, B, 4H) -> hs (T, B, H), c_T; rows stop changing at their length."""
    H = h0.shape[-1]

    def step(carry, xs):
        h, c = carry
        g, t = xs
        z = g + h @ w_hh
        i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
        u, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
        c_new = f * c + i * u
        h_new = o * jnp.tanh(c_new)
        m = (t < lengths)[:, None]
        h_new, c_new = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
        return (h_new, c_new), h_new

    (_, cT), hs = jax.lax.scan(step, (h0, c0), (gx, jnp.arange(gx.shape[0])))
    return hs, cT


def ref_apply(params, tokens, h0, c0):
    """tokens (B, T) -> logits (B, T, V), h_T, c_T (L, B, H)."""
    x = params["embed"][tokens]  # (B, T, E)
    hT, cT = [], []
    T = tokens.shape[1]
    for l, p in enumerate(params["layers"]):
        gx = jnp.swapaxes(x, 0, 1) @ p["w_ih"] + p["b"]  # (T, B, 4H)
        hs, c = ref_recurrence(gx, p["w_hh"], h0[l], c0[l], jnp.full((tokens.shape[0],), T))
        x = jnp.swapaxes(hs, 0, 1)
        hT.append(hs[-1])
        cT.append(c)
    return x @ params["out"]["w"] + params["out"]["b"], jnp.stack(hT), jnp.stack(cT)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _close(got, want, tol, what):
    for path, g, w in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), jax.tree.leaves(want)):
        assert _rel(g, w) <= tol, f"{what} {jax.tree_util.keystr(path[0])}: relative error {_rel(g, w):.2e}"


def _model_loss(apply_fn, targets, wh, wc):
    """A loss that touches every output: target log-probs (pad targets masked out) plus h_T and c_T,
    so the cotangents of the final state reach every layer."""

    def loss(params, h0, c0):
        logits, hT, cT = apply_fn(params, h0, c0)
        logp = jax.nn.log_softmax(logits, axis=-1)
        lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(targets != 0, lp, 0.0)) + jnp.sum(hT * wh) + jnp.sum(cT * wc)

    return loss


# (V, E, H, layers, B, T): V <= T*B folds the first projection into the embedding table; V = 600 > T*B
# and > 512 takes the plain gather (no one-hot lookup); H = 12 is not a power of two.
# Pallas runs in interpret mode here (seconds per shape), so it gets the multi-layer case only; its
# recurrence is covered shape by shape below.
MODEL_CASES = [("scan", 6, 8, 12, 1, 5, 7), ("scan", 9, 6, 16, 3, 4, 6), ("scan", 600, 8, 12, 2, 3, 5),
               ("pallas", 9, 6, 16, 3, 4, 6)]


@pytest.mark.parametrize("backend,V,E,H,L,B,T", MODEL_CASES)
def test_model_value_and_gradient_match_plain_autodiff(backend, V, E, H, L, B, T):
    _check_model_against_reference(backend, V, E, H, L, B, T)


def test_model_traced_for_a_gpu_matches_plain_autodiff(monkeypatch):
    """A model traced for a GPU embeds through the one-hot lookup (CPU takes the gather) and unrolls
    its scan by 8: the same reference must hold. Tracing needs no GPU; only the platform is faked."""
    calls = []
    real = model_mod._lookup
    monkeypatch.setattr(lstm, "platform", lambda: "gpu")
    monkeypatch.setattr(model_mod, "_lookup", lambda *a: calls.append(1) or real(*a))
    _check_model_against_reference("scan", 9, 6, 16, 2, 4, 6)
    assert calls, "the GPU path did not go through the one-hot lookup"


def test_one_hot_lookup_gradient_sums_repeated_tokens():
    V, D = 7, 5
    table = jax.random.normal(jax.random.key(0), (V, D))
    tokens = jnp.array([[1, 3, 3], [6, 1, 1]])  # repeats, and rows 0, 2, 4, 5 never used
    w = jax.random.normal(jax.random.key(1), (2, 3, D))
    g = jax.grad(lambda t: jnp.sum(model_mod._lookup(t, tokens, V) * w))(table)
    want = np.zeros((V, D))
    for (b, t), tok in np.ndenumerate(np.asarray(tokens)):
        want[tok] += np.asarray(w[b, t])
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-6, atol=1e-6)


def _check_model_against_reference(backend, V, E, H, L, B, T):
    cfg = ModelConfig(vocab_size=V, embed=E, hidden=H, layers=L, backend=backend)
    params = init_params(cfg, 1)
    k = jax.random.split(jax.random.key(V + L), 6)
    tokens = jax.random.randint(k[0], (B, T), 1, V)
    targets = jax.random.randint(k[1], (B, T), 1, V).at[-1, T // 2:].set(0)  # a padded row tail
    h0 = 0.5 * jax.random.normal(k[2], (L, B, H))
    c0 = 0.5 * jax.random.normal(k[3], (L, B, H))
    wh, wc = jax.random.normal(k[4], (L, B, H)), jax.random.normal(k[5], (L, B, H))

    def ours(params, h0, c0):
        from seqgen_jax.model import LSTMState

        logits, st = apply(params, tokens, LSTMState(h0, c0), cfg=cfg)
        return logits, st.h, st.c

    loss_ours = _model_loss(ours, targets, wh, wc)
    loss_ref = _model_loss(lambda p, h, c: ref_apply(p, tokens, h, c), targets, wh, wc)
    v, g = jax.value_and_grad(loss_ours, argnums=(0, 1, 2))(params, h0, c0)
    v_ref, g_ref = jax.value_and_grad(loss_ref, argnums=(0, 1, 2))(params, h0, c0)
    assert abs(float(v) - float(v_ref)) <= 1e-5 * abs(float(v_ref))
    _close(g, g_ref, 5e-6, f"{backend} gradient")


# (T, B, H, tiling): one tile; several column tiles with W resident; W read per step; a batch that is
# not a multiple of the tile.
REC_CASES = [(5, 3, 7, lstm_pallas.Tiling()),
             (6, 20, 40, lstm_pallas.Tiling(block_h=16)),
             (4, 17, 70, lstm_pallas.Tiling(block_h=32, resident_max_h=16))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,B,H,tiling", REC_CASES)
def test_recurrence_with_lengths_matches_plain_autodiff(backend, T, B, H, tiling):
    k = jax.random.split(jax.random.key(T * B), 7)
    gx = jax.random.normal(k[0], (T, B, 4 * H))
    w = jax.random.normal(k[1], (H, 4 * H)) / np.sqrt(H)
    h0, c0 = 0.5 * jax.random.normal(k[2], (B, H)), 0.5 * jax.random.normal(k[3], (B, H))
    lengths = jax.random.randint(k[4], (B,), 0, T + 1).at[0].set(T).at[1].set(0)
    wts, wc = jax.random.normal(k[5], (T, B, H)), jax.random.normal(k[6], (B, H))
    fn = (lambda *a: lstm_pallas.recurrence(*a, tiling=tiling)) if backend == "pallas" else lstm_scan.recurrence

    def loss(f):
        def L(gx, w, h0, c0):
            hs, cT = f(gx, w, h0, c0, lengths)
            return jnp.sum(hs * wts) + jnp.sum(cT * wc)

        return L

    (hs, cT) = fn(gx, w, h0, c0, lengths)
    hs_ref, cT_ref = ref_recurrence(gx, w, h0, c0, lengths)
    _close((hs, cT), (hs_ref, cT_ref), 2e-6, f"{backend} value")
    # A row of length 0 keeps its initial state.
    np.testing.assert_array_equal(np.asarray(cT[1]), np.asarray(c0[1]))
    g = jax.grad(loss(fn), argnums=(0, 1, 2, 3))(gx, w, h0, c0)
    g_ref = jax.grad(loss(ref_recurrence), argnums=(0, 1, 2, 3))(gx, w, h0, c0)
    _close(g, g_ref, 5e-6, f"{backend} gradient")


def test_pallas_bf16_stays_close_to_fp32():
    T, B, H = 6, 16, 24
    k = jax.random.split(jax.random.key(3), 3)
    gx = jax.random.normal(k[0], (T, B, 4 * H))
    w = jax.random.normal(k[1], (H, 4 * H)) / np.sqrt(H)
    h0 = jnp.zeros((B, H))
    hs16, _ = lstm_pallas.recurrence(gx, w, h0, h0, dtype=jnp.bfloat16)
    hs32, _ = ref_recurrence(gx, w, h0, h0, jnp.full((B,), T))
    err = _rel(hs16, hs32)
    assert 1e-6 < err < 3e-2  # bf16 inputs really reach the dot, and accumulation stays fp32


def test_pallas_kernels_lower_for_cuda_on_this_machine(monkeypatch):
    """The Triton lowering (block shapes, no register slicing, dot minimums) runs at JAX lowering time,
    which JAX allows for another platform on a CPU machine; PTX compilation is left to the GPU."""
    monkeypatch.setattr(lstm_pallas, "_interpret", lambda: False)
    T, B, H = 7, 40, 300
    gx, w, h0 = jnp.zeros((T, B, 4 * H)), jnp.zeros((H, 4 * H)), jnp.zeros((B, H))
    for dtype in (jnp.float32, jnp.bfloat16):
        f = lambda gx, w, h0, c0: jnp.sum(lstm_pallas.recurrence(gx, w, h0, c0, dtype=dtype)[0])
        text = jax.jit(jax.grad(f, argnums=(0, 1))).trace(gx, w, h0, h0).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == 2, "expected one Triton call forward and one backward"


def test_resolve_picks_and_refuses():
    assert lstm.resolve("auto", platform_name="cpu").backend.name == "scan"
    assert lstm.resolve("auto", platform_name="cpu").unroll == 1
    assert lstm.resolve("auto", platform_name="gpu").unroll == 8
    assert lstm.resolve("scan", unroll=3, platform_name="gpu").unroll == 3
    # auto by shape on a GPU (the H200 round): the Pallas kernel for narrow layers over many steps,
    # on one device and without dropout; the scan otherwise.
    gpu = dict(platform_name="cuda", devices=1)
    assert lstm.resolve("auto", hidden=16, steps=200, **gpu).backend.name == "pallas"
    assert lstm.resolve("auto", hidden=64, steps=32, **gpu).backend.name == "pallas"
    assert lstm.resolve("auto", hidden=65, steps=200, **gpu).backend.name == "scan"
    assert lstm.resolve("auto", hidden=300, steps=200, **gpu).backend.name == "scan"
    assert lstm.resolve("auto", hidden=16, steps=1, **gpu).backend.name == "scan"  # sampling: a token a step
    assert lstm.resolve("auto", hidden=16, steps=200, dropout=0.1, **gpu).backend.name == "scan"
    assert lstm.resolve("auto", hidden=16, steps=200, platform_name="cuda", devices=2).backend.name == "scan"
    assert lstm.resolve("auto", hidden=16, steps=200, platform_name="cpu", devices=1).backend.name == "scan"
    for kwargs, needle in [({"backend": "cudnn", "platform_name": "cpu"}, "does not run on cpu"),
                           ({"backend": "cudnn", "platform_name": "gpu", "precision": "bf16"}, "fp32"),
                           ({"backend": "pallas", "platform_name": "gpu", "unroll": 4}, "--unroll 4"),
                           ({"backend": "pallas", "platform_name": "tpu"}, "does not run on tpu"),
                           ({"backend": "nope", "platform_name": "cpu"}, "not one of")]:
        with pytest.raises(UserError, match=needle):
            lstm.resolve(**kwargs)


def test_model_auto_reaches_pallas_by_shape(monkeypatch):
    """The model passes its width and length to `resolve`: lowered for CUDA on one device, a (·, 16)
    model over 40 steps calls the Triton kernel and a (·, 96) one does not."""
    monkeypatch.setattr(lstm_pallas, "_interpret", lambda: False)
    monkeypatch.setattr(lstm, "platform", lambda: "cuda")
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
    from seqgen_jax.model import apply_tm

    for hidden, calls in ((16, 1), (96, 0)):
        cfg = ModelConfig(embed=8, hidden=hidden, layers=1, vocab_size=6)
        params = init_params(cfg, 0)
        tokens = jnp.zeros((40, 4), jnp.int32)
        text = jax.jit(lambda p, t: apply_tm(p, t, cfg=cfg)[0]).trace(params, tokens).lower(
            lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == calls, (hidden, calls)


@pytest.mark.parametrize("H", [24, 48, 64])
def test_auto_sends_widths_17_to_64_to_pallas_and_it_matches_plain_autodiff(monkeypatch, H):
    """The widths the H200 round did not measure but `auto` sends to the Pallas kernel on one GPU
    (H <= 64 over >= 32 steps): the model as `auto` resolves it for CUDA, run in interpret mode here,
    against the plain-autodiff reference (values and gradients)."""
    monkeypatch.setattr(lstm, "platform", lambda: "cuda")
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
    assert lstm.resolve("auto", hidden=H, steps=32).backend.name == "pallas"
    calls = []
    real = lstm_pallas.recurrence
    monkeypatch.setattr(lstm_pallas, "recurrence", lambda *a, **k: calls.append(1) or real(*a, **k))
    _check_model_against_reference("auto", 7, 5, H, 1, 3, 32)
    assert calls, "auto did not reach the Pallas kernel"
