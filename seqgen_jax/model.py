"""Embedding -> LSTM layers (unrolled with lax.scan) -> Dense, as Flax NNX modules over pure functions.

The LSTM math lives in pure functions of a parameter pytree (`lstm_layer`, `apply`); the NNX modules
own parameter creation and call the same functions. Training, evaluation and the sampler all go
through `apply(params, tokens, state)`, so they cannot drift apart, and the math is shielded from NNX
API churn. Gate order is PyTorch's (i, f, g, o), so weights can be compared with `torch.nn.LSTM`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .config import ModelConfig

Params = dict  # nested dict of arrays: {"embed", "layers": [{"w_ih","w_hh","b"}...], "out": {"w","b"}}


class LSTMState(NamedTuple):
    h: jax.Array  # (L, B, H)
    c: jax.Array  # (L, B, H)


def default_unroll(cfg: ModelConfig) -> int:
    """Measured (benchmarks/NOTES.md): unrolling pays on GPU, where each loop iteration costs a
    kernel launch; on CPU the loop overhead is small against the matmuls."""
    if cfg.unroll > 0:
        return cfg.unroll
    return 8 if jax.default_backend() in ("gpu", "cuda", "rocm") else 1


def _dot(x, w, dtype):
    # bf16 inputs with fp32 accumulation; fp32 stays fp32 (XLA's default precision on the backend).
    return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _gate_scale(H: int) -> jax.Array:
    """sigmoid(x) = 0.5 * tanh(x / 2) + 0.5: with the i, f, o pre-activations halved, one tanh over the
    whole (B, 4H) gate block replaces three sigmoids and a tanh on column slices, which XLA:CPU runs
    several times slower (benchmarks/NOTES.md). The halving is applied to the weights and the input
    projection outside the loop, so autodiff carries it into their gradients."""
    return jnp.concatenate([jnp.full((2 * H,), 0.5), jnp.ones((H,)), jnp.full((H,), 0.5)])


# d gate / d scaled pre-activation, from the stored tanh t: 0.5 * (1 - t^2) for the sigmoid gates
# (sigmoid = 0.5 * t + 0.5) and (1 - t^2) for the cell input.
_GATE_DERIV = (0.5, 0.5, 1.0, 0.5)


@functools.lru_cache(maxsize=None)
def _recurrence(unroll: int, dtype):
    """hs (T, B, H), c_T = recurrence(gx (T, B, 4H), w_s (H, 4H), h0, c0) with a hand-written VJP.

    gx and w_s are already gate-scaled (`_gate_scale`). Scan's own transpose accumulates dW_hh with an
    (H, B) x (B, 4H) matmul inside every backward step; here the backward loop only propagates dh
    through W_hh and stores the gate gradients, and the weight gradient is one (H, T*B) x (T*B, 4H)
    matmul after the loop (benchmarks/NOTES.md)."""

    def fwd_loop(gx, w_s, h0, c0):
        H = h0.shape[-1]

        def step(carry, g_t):
            h, c = carry
            t = jnp.tanh(g_t + _dot(h, w_s, dtype))  # (B, 4H)
            i, f, o = 0.5 * t[:, :H] + 0.5, 0.5 * t[:, H:2 * H] + 0.5, 0.5 * t[:, 3 * H:] + 0.5
            c = f * c + i * t[:, 2 * H:3 * H]
            h = o * jnp.tanh(c)
            return (h, c), (h, c, t)

        _, (hs, cs, ts) = jax.lax.scan(step, (h0, c0), gx, unroll=max(1, min(unroll, gx.shape[0])))
        return hs, cs, ts

    @jax.custom_vjp
    def recurrence(gx, w_s, h0, c0):
        hs, cs, _ = fwd_loop(gx, w_s, h0, c0)
        return hs, cs[-1]

    def rec_fwd(gx, w_s, h0, c0):
        hs, cs, ts = fwd_loop(gx, w_s, h0, c0)
        return (hs, cs[-1]), (w_s, h0, c0, hs, cs, ts)

    def rec_bwd(res, cot):
        w_s, h0, c0, hs, cs, ts = res
        d_hs, d_cT = cot
        H = h0.shape[-1]
        c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)  # (T, B, H)
        w_t = w_s.T
        q0, q1, q2, q3 = _GATE_DERIV

        def step(carry, xs):
            dh_next, dc_next = carry
            dh_out, t, c, cp = xs
            t0, t1, t2, t3 = t[:, :H], t[:, H:2 * H], t[:, 2 * H:3 * H], t[:, 3 * H:]
            dh = dh_out + dh_next
            tc = jnp.tanh(c)
            dc = dc_next + dh * (0.5 * t3 + 0.5) * (1.0 - tc * tc)
            # Each gate's gradient is finished before the concatenation: about 10% faster on this loop
            # alone than concatenating first and multiplying after (benchmarks/NOTES.md, attempt 11).
            dg = jnp.concatenate([dc * t2 * (1.0 - t0 * t0) * q0,
                                  dc * cp * (1.0 - t1 * t1) * q1,
                                  dc * (0.5 * t0 + 0.5) * (1.0 - t2 * t2) * q2,
                                  dh * tc * (1.0 - t3 * t3) * q3], axis=-1)  # (B, 4H)
            return (_dot(dg, w_t, dtype), dc * (0.5 * t1 + 0.5)), dg

        (dh0, dc0), dgs = jax.lax.scan(step, (jnp.zeros_like(h0), d_cT), (d_hs, ts, cs, c_prev), reverse=True,
                                       unroll=max(1, min(unroll, hs.shape[0])))
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, B, H)
        T, B = hs.shape[:2]
        d_w = _dot(h_prev.reshape(T * B, H).T, dgs.reshape(T * B, 4 * H), dtype)
        return dgs, d_w.astype(w_s.dtype), dh0, dc0

    recurrence.defvjp(rec_fwd, rec_bwd)
    return recurrence


def lstm_layer_tm(p: dict, gx: jax.Array, h0: jax.Array, c0: jax.Array, *, unroll: int = 1,
                  dtype=jnp.float32):
    """The recurrence of one layer, time-major: gx (T, B, 4H) = x @ w_ih + b, unscaled ->
    hs (T, B, H), (h_T, c_T)."""
    scale = _gate_scale(h0.shape[-1])
    hs, cT = _recurrence(int(unroll), jnp.dtype(dtype))(gx * scale, p["w_hh"] * scale, h0, c0)
    return hs, (hs[-1], cT)


def lstm_layer(p: dict, xs: jax.Array, h0: jax.Array, c0: jax.Array, *, unroll: int = 1,
               dtype=jnp.float32):
    """One LSTM layer over a batch-major sequence: xs (B, T, D) -> ys (B, T, H), (h_T, c_T) each (B, H).

    The input projection of all T steps is one (B*T, D) x (D, 4H) matmul outside the loop; only
    h @ W_hh runs inside it."""
    gx = _dot(jnp.swapaxes(xs, 0, 1), p["w_ih"], dtype) + p["b"]  # (T, B, 4H)
    hs, last = lstm_layer_tm(p, gx, h0, c0, unroll=unroll, dtype=dtype)
    return jnp.swapaxes(hs, 0, 1), last


def zero_state(cfg: ModelConfig, batch: int) -> LSTMState:
    z = jnp.zeros((cfg.layers, batch, cfg.hidden), jnp.float32)
    return LSTMState(z, z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _lookup(table, tokens, V: int):
    """table[tokens] whose gradient is a one-hot matmul: the gather's own gradient is a scatter-add,
    which is slow on CPU (benchmarks/NOTES.md)."""
    return jnp.take(table, tokens, axis=0)


def _lookup_fwd(table, tokens, V):
    return jnp.take(table, tokens, axis=0), tokens


def _lookup_bwd(V, tokens, g):
    onehot = jax.nn.one_hot(tokens.reshape(-1), V, dtype=g.dtype)  # (N, V)
    return jnp.dot(onehot.T, g.reshape(-1, g.shape[-1])), None


_lookup.defvjp(_lookup_fwd, _lookup_bwd)


def _embed(table, tokens):
    # Large vocabularies keep the gather and its scatter-add: a (N, V) one-hot would not pay.
    V = table.shape[0]
    return _lookup(table, tokens, V) if V <= 512 else jnp.take(table, tokens, axis=0)


def _dropout(x, rate, key):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def apply_tm(params: Params, tokens: jax.Array, state: LSTMState | None = None, *, cfg: ModelConfig,
             dropout_key: jax.Array | None = None):
    """The model, time-major: tokens (T, B) int -> logits (T, B, V) float32, final LSTMState.

    Time-major end to end, so no (B, T, ...) <-> (T, B, ...) transposes of activations happen around
    the loops. Without dropout on the embedding, the first layer's input projection is folded into
    the embedding: gx = (E @ W_ih + b)[tokens], a (V, 4H) table instead of a (T*B, E) x (E, 4H)
    matmul (and its two gradient matmuls), whenever V <= T*B.
    Dropout (when `dropout_key` is given and cfg.dropout > 0) drops the non-recurrent connections:
    the embedding output, between layers, and before the output layer (Zaremba et al., 2014)."""
    dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    T, B = tokens.shape
    if state is None:
        state = zero_state(cfg, B)
    drop = dropout_key is not None and cfg.dropout > 0
    keys = jax.random.split(dropout_key, cfg.layers + 1) if drop else [None] * (cfg.layers + 1)
    V = params["embed"].shape[0]
    fold = not drop and cfg.backend != "cudnn" and V <= T * B
    x = None if fold else _embed(params["embed"], tokens)  # (T, B, E)
    hs, cs = [], []
    for l, p in enumerate(params["layers"]):
        if drop:
            x = _dropout(x, cfg.dropout, keys[l])
        if cfg.backend == "cudnn":
            from .cudnn import lstm_layer_cudnn

            y, (h, c) = lstm_layer_cudnn(p, jnp.swapaxes(x, 0, 1), state.h[l], state.c[l])
            x = jnp.swapaxes(y, 0, 1)
        else:
            if l == 0 and fold:
                gx = _embed(_dot(params["embed"], p["w_ih"], dtype) + p["b"], tokens)  # (T, B, 4H)
            else:
                gx = _dot(x, p["w_ih"], dtype) + p["b"]  # (T, B, 4H)
            x, (h, c) = lstm_layer_tm(p, gx, state.h[l], state.c[l], unroll=default_unroll(cfg), dtype=dtype)
        hs.append(h)
        cs.append(c)
    if drop:
        x = _dropout(x, cfg.dropout, keys[-1])
    logits = _dot(x, params["out"]["w"], dtype) + params["out"]["b"]  # (T, B, V)
    return logits, LSTMState(jnp.stack(hs), jnp.stack(cs))


def apply(params: Params, tokens: jax.Array, state: LSTMState | None = None, *, cfg: ModelConfig,
          dropout_key: jax.Array | None = None):
    """tokens (B, T) int -> logits (B, T, V) float32, final LSTMState (see `apply_tm`)."""
    logits, state = apply_tm(params, tokens.T, state, cfg=cfg, dropout_key=dropout_key)
    return jnp.swapaxes(logits, 0, 1), state


def token_logprobs(params: Params, rows: jax.Array, *, cfg: ModelConfig, dropout_key=None):
    """rows (B, T+1) = [.start, symbols..., .end, pad...] -> log p(target) (B, T), logits (B, T, V).

    Positions whose target is padding (id 0) hold 0. Callers that drop the logits pay nothing for
    them: the batch-major transpose is dead code to XLA."""
    tok = rows.T  # (T+1, B): transposing the ids is cheap, the activations then never are
    inputs, targets = tok[:-1], tok[1:]
    logits, _ = apply_tm(params, inputs, None, cfg=cfg, dropout_key=dropout_key)  # (T, B, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    # A one-hot product instead of take_along_axis: its gradient avoids a scatter.
    lp = jnp.sum(logp * jax.nn.one_hot(targets, logits.shape[-1], dtype=logp.dtype), axis=-1)
    lp = jnp.where(targets != 0, lp, 0.0).T  # (B, T)
    return lp, jnp.swapaxes(logits, 0, 1)


# ---------------------------------------------------------------- Flax NNX modules (parameter owners)
class LSTMLayer(nnx.Module):
    """An LSTM layer as a Flax module; `__call__` is the pure `lstm_layer` over its own parameters."""

    def __init__(self, d_in: int, hidden: int, *, rngs: nnx.Rngs):
        bound = 1.0 / jnp.sqrt(hidden)
        uni = nnx.initializers.uniform(2 * bound)
        self.w_ih = nnx.Param(uni(rngs.params(), (d_in, 4 * hidden)) - bound)
        self.w_hh = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (hidden, 4 * hidden)))
        # Forget-gate bias 1: the cell remembers by default, which speeds early training.
        self.b = nnx.Param(jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(1.0))
        self.hidden = hidden

    def __call__(self, xs, h0=None, c0=None, unroll: int = 1):
        B = xs.shape[0]
        h0 = jnp.zeros((B, self.hidden)) if h0 is None else h0
        c0 = jnp.zeros((B, self.hidden)) if c0 is None else c0
        p = {"w_ih": self.w_ih[...], "w_hh": self.w_hh[...], "b": self.b[...]}
        return lstm_layer(p, xs, h0, c0, unroll=unroll)


class CharLSTM(nnx.Module):
    """Embed(V, E) -> `layers` x LSTMLayer(H) -> Linear(H, V)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.embed, rngs=rngs,
                               embedding_init=nnx.initializers.normal(1.0))
        dims = [cfg.embed] + [cfg.hidden] * (cfg.layers - 1)
        self.layers = nnx.List([LSTMLayer(d, cfg.hidden, rngs=rngs) for d in dims])
        self.out = nnx.Linear(cfg.hidden, cfg.vocab_size, rngs=rngs)

    def params(self) -> Params:
        return {
            "embed": self.embed.embedding[...],
            "layers": [{"w_ih": l.w_ih[...], "w_hh": l.w_hh[...], "b": l.b[...]} for l in self.layers],
            "out": {"w": self.out.kernel[...], "b": self.out.bias[...]},
        }

    def __call__(self, tokens, state=None):
        return apply(self.params(), tokens, state, cfg=self.cfg)


def init_params(cfg: ModelConfig, seed: int) -> Params:
    """A fresh parameter pytree (plain dicts and lists of float32 arrays)."""
    if cfg.vocab_size < 5:
        raise ValueError("vocab_size must be set from the dataset before building the model")
    return jax.tree.map(jnp.asarray, CharLSTM(cfg, rngs=nnx.Rngs(seed)).params())


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
