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

from . import lstm
from .config import ModelConfig
from .lstm import scan as lstm_scan

Params = dict  # nested dict of arrays: {"embed", "layers": [{"w_ih","w_hh","b"}...], "out": {"w","b"}}


class LSTMState(NamedTuple):
    h: jax.Array  # (L, B, H)
    c: jax.Array  # (L, B, H)


def _dot(x, w, dtype):
    return lstm_scan.dot(x, w, dtype)


def lstm_layer_tm(p: dict, gx: jax.Array, h0: jax.Array, c0: jax.Array, *, unroll: int = 1,
                  dtype=jnp.float32, backend: str = "scan", lengths=None, resets=None, tokens=None):
    """The recurrence of one layer, time-major: gx (T, B, 4H) = x @ w_ih + b -> hs (T, B, H), (h_T, c_T).

    With `lengths`, h_T and c_T are each row's state after its last real step; with `resets` (T, B),
    the state is zeroed before the steps it marks; with `tokens` (T, B) (the scan backend only), gx is
    a (V, 4H) table that the loop reads at the tokens."""
    rec = lstm.BACKENDS[backend].recurrence
    extra = {} if resets is None else {"resets": resets}
    if tokens is not None:
        extra["tokens"] = tokens
    hs, cT = rec(gx, p["w_hh"], h0, c0, lengths, unroll=unroll, dtype=dtype, **extra)
    hT = hs[-1]
    return hs, (hT, cT)


def lstm_layer(p: dict, xs: jax.Array, h0: jax.Array, c0: jax.Array, *, unroll: int = 1,
               dtype=jnp.float32, backend: str = "scan"):
    """One LSTM layer over a batch-major sequence: xs (B, T, D) -> ys (B, T, H), (h_T, c_T) each (B, H).

    The input projection of all T steps is one (B*T, D) x (D, 4H) matmul outside the loop; only
    h @ W_hh runs inside it."""
    gx = _dot(jnp.swapaxes(xs, 0, 1), p["w_ih"], dtype) + p["b"]  # (T, B, 4H)
    hs, last = lstm_layer_tm(p, gx, h0, c0, unroll=unroll, dtype=dtype, backend=backend)
    return jnp.swapaxes(hs, 0, 1), last


def zero_state(cfg: ModelConfig, batch: int) -> LSTMState:
    z = jnp.zeros((cfg.layers, batch, cfg.hidden), jnp.float32)
    return LSTMState(z, z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _lookup(table, tokens, V: int):
    """table[tokens] whose gradient is a one-hot matmul instead of the gather's scatter-add (kept for
    accelerators, where the GPU round measured the model with it; benchmarks/NOTES.md)."""
    return jnp.take(table, tokens, axis=0)


def _lookup_fwd(table, tokens, V):
    return jnp.take(table, tokens, axis=0), tokens


def _lookup_bwd(V, tokens, g):
    onehot = jax.nn.one_hot(tokens.reshape(-1), V, dtype=g.dtype)  # (N, V)
    return jnp.dot(onehot.T, g.reshape(-1, g.shape[-1])), None


_lookup.defvjp(_lookup_fwd, _lookup_bwd)


def _embed(table, tokens):
    # On CPU the gather's scatter-add gradient is 20-45x faster than the one-hot matmul with XLA:CPU's
    # current runtime (0.2 ms against 9.4 ms for 1,040 tokens into a (183, 1536) table, one core;
    # benchmarks/NOTES.md, attempt 24). Large vocabularies keep the scatter-add everywhere.
    V = table.shape[0]
    if V > 512 or lstm.platform() == "cpu":
        return jnp.take(table, tokens, axis=0)
    return _lookup(table, tokens, V)


def _dropout(x, rate, key):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def apply_tm(params: Params, tokens: jax.Array, state: LSTMState | None = None, *, cfg: ModelConfig,
             dropout_key: jax.Array | None = None, resets: jax.Array | None = None):
    """The model, time-major: tokens (T, B) int -> logits (T, B, V) float32, final LSTMState.

    Time-major end to end, so no (B, T, ...) <-> (T, B, ...) transposes of activations happen around
    the loops. Without dropout on the embedding, the first layer's input projection is folded into
    the embedding: gx = (E @ W_ih + b)[tokens], a (V, 4H) table instead of a (T*B, E) x (E, 4H)
    matmul (and its two gradient matmuls), whenever V <= T*B.
    Dropout (when `dropout_key` is given and cfg.dropout > 0) drops the non-recurrent connections:
    the embedding output, between layers, and before the output layer (Zaremba et al., 2014).
    `resets` (T, B) bool zeroes every layer's state before the marked steps (strings packed end to
    end, each starting afresh at its `.start`); only the scan backend supports it."""
    dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    T, B = tokens.shape
    run = lstm.resolve(cfg.backend, precision=cfg.precision, unroll=cfg.unroll, dropout=cfg.dropout,
                       hidden=cfg.hidden, steps=T, resets=resets is not None)
    if state is None:
        state = zero_state(cfg, B)
    drop = dropout_key is not None and cfg.dropout > 0
    keys = jax.random.split(dropout_key, cfg.layers + 1) if drop else [None] * (cfg.layers + 1)
    V = params["embed"].shape[0]
    fold = cfg.fold and not drop and run.backend.recurrence is not None and V <= T * B
    x = None if fold else _embed(params["embed"], tokens)  # (T, B, E)
    hs, cs = [], []
    for l, p in enumerate(params["layers"]):
        if drop:
            x = _dropout(x, cfg.dropout, keys[l])
        if run.backend.recurrence is None:
            x, (h, c) = run.backend.layer(p, x, state.h[l], state.c[l])
        else:
            tok = None
            if l == 0 and fold:
                gx = _dot(params["embed"], p["w_ih"], dtype) + p["b"]  # (V, 4H)
                if run.backend.name == "scan" and lstm.platform() == "cpu":
                    tok = tokens  # gathered inside the loop (lstm/scan.py)
                else:
                    gx = _embed(gx, tokens)  # (T, B, 4H)
            else:
                gx = _dot(x, p["w_ih"], dtype) + p["b"]  # (T, B, 4H)
            x, (h, c) = lstm_layer_tm(p, gx, state.h[l], state.c[l], unroll=run.unroll, dtype=dtype,
                                      backend=run.backend.name, resets=resets, tokens=tok)
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
