"""Optional `backend="cudnn"`: one LSTM layer through cuDNN via `jax.experimental.rnn` (GPU, fp32).

The Flax-cell scan stays the default; this exists to benchmark against cuDNN from JAX itself. Our
parameters (w_ih (D, 4H), w_hh (H, 4H), b (4H,), gate order i, f, g, o) are packed into cuDNN's flat
layout [W_ih (4H, D), W_hh (4H, H), b_ih, b_hh] on every call (cheap next to the recurrence)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import UserError


def pack(p: dict) -> jax.Array:
    return jnp.concatenate([p["w_ih"].T.ravel(), p["w_hh"].T.ravel(), p["b"], jnp.zeros_like(p["b"])])


def lstm_layer_cudnn(p: dict, xs_tm, h0, c0):
    """xs_tm (T, B, D) time-major -> hs (T, B, H), (h_T, c_T)."""
    if jax.default_backend() not in ("gpu", "cuda"):
        raise UserError("--backend cudnn needs an NVIDIA GPU; use --backend auto or scan on this machine")
    from jax.experimental import rnn

    xs = jnp.swapaxes(xs_tm, 0, 1)  # cuDNN's JAX binding is batch-major
    B, T, D = xs.shape
    H = h0.shape[-1]
    lengths = jnp.full((B,), T, jnp.int32)
    y, h, c = rnn.lstm(xs.astype(jnp.float32), h0[None], c0[None], pack(p), lengths, input_size=D,
                       hidden_size=H, num_layers=1, dropout=0.0, bidirectional=False)
    return jnp.swapaxes(y, 0, 1), (h[0], c[0])
