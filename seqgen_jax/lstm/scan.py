"""`backend="scan"`: the LSTM recurrence as a `lax.scan` with a hand-written VJP (every platform).

Contract shared with the other recurrence backends: `recurrence(gx, w_hh, h0, c0, lengths=None, *,
unroll, dtype) -> (hs, c_T)`, with gx (T, B, 4H) = x @ w_ih + b (unscaled), w_hh (H, 4H), h0/c0 (B, H),
gate order (i, f, g, o). With `lengths` (B,), steps t >= lengths[b] leave row b's state untouched
(hs[t] repeats the last valid h and c_T is the state at the row's end). With `resets` (T, B) bool, row
b's state is set to zero before step t wherever resets[t, b] (the packed feed: a new string starts
there), so no information and no gradient crosses that boundary. With `tokens` (T, B) int, gx is a
(V, 4H) table and step t's input is gx[tokens[t]], gathered inside the loop (the embedding folded
into the first projection, `model.apply_tm`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def dot(x, w, dtype):
    # bf16 inputs with fp32 accumulation; fp32 stays fp32 (XLA's default precision on the platform).
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
def _recurrence(unroll: int, dtype, masked: bool, reset: bool = False, gather: int = 0):
    """hs (T, B, H), c_T = recurrence(gx (T, B, 4H), w_s (H, 4H), h0, c0, lengths) with a hand-written VJP.

    gx and w_s are already gate-scaled (`_gate_scale`). Scan's own transpose accumulates dW_hh with an
    (H, B) x (B, 4H) matmul inside every backward step; here the backward loop only propagates dh
    through W_hh and stores the gate gradients, and the weight gradient is one (H, T*B) x (T*B, 4H)
    matmul after the loop (benchmarks/NOTES.md). `masked` is static so the unmasked loop (the training
    default) carries no select; so is `reset`.

    `gather` = V > 0: gx is a (V, 4H) table read at `tokens` inside the loop. The (T, B, 4H) input is then never
    written: its gather and gate scaling cost about as much as a third of the forward loop at (300, 300)
    (benchmarks/NOTES.md, attempt 35), and its gradient is one scatter-add of the gate gradients."""

    def fwd_loop(gx, w_s, h0, c0, lengths, resets, tokens):
        H = h0.shape[-1]

        def step(carry, xs):
            h, c = carry
            g_t, t_idx, r_t = xs
            if gather:
                g_t = jnp.take(gx, g_t, axis=0, mode="clip")  # (B, 4H) rows of the table
            if reset:
                h, c = jnp.where(r_t[:, None], 0.0, h), jnp.where(r_t[:, None], 0.0, c)
            t = jnp.tanh(g_t + dot(h, w_s, dtype))  # (B, 4H)
            i, f, o = 0.5 * t[:, :H] + 0.5, 0.5 * t[:, H:2 * H] + 0.5, 0.5 * t[:, 3 * H:] + 0.5
            c_new = f * c + i * t[:, 2 * H:3 * H]
            h_new = o * jnp.tanh(c_new)
            if masked:
                m = (t_idx < lengths)[:, None]
                h_new, c_new = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
            return (h_new, c_new), (h_new, c_new, t)

        T = tokens.shape[0] if gather else gx.shape[0]
        # The step index and reset flags ride along only when needed: the default loop is the plain graph.
        xs = (tokens if gather else gx, jnp.arange(T) if masked else None, resets if reset else None)
        _, (hs, cs, ts) = jax.lax.scan(step, (h0, c0), xs, unroll=max(1, min(unroll, T)))
        return hs, cs, ts

    @jax.custom_vjp
    def recurrence(gx, w_s, h0, c0, lengths, resets, tokens):
        hs, cs, _ = fwd_loop(gx, w_s, h0, c0, lengths, resets, tokens)
        return hs, cs[-1]

    def rec_fwd(gx, w_s, h0, c0, lengths, resets, tokens):
        hs, cs, ts = fwd_loop(gx, w_s, h0, c0, lengths, resets, tokens)
        return (hs, cs[-1]), (w_s, h0, c0, hs, cs, ts, lengths, resets, tokens)

    def rec_bwd(res, cot):
        w_s, h0, c0, hs, cs, ts, lengths, resets, tokens = res
        d_hs, d_cT = cot
        H = h0.shape[-1]
        T = hs.shape[0]
        c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)  # (T, B, H)
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, B, H)
        if reset:  # the state each step really started from
            c_prev = jnp.where(resets[..., None], 0.0, c_prev)
            h_prev = jnp.where(resets[..., None], 0.0, h_prev)
        w_t = w_s.T
        q0, q1, q2, q3 = _GATE_DERIV

        def step(carry, xs):
            dh_next, dc_next = carry
            dh_out, t, c, cp, t_idx, r_t = xs
            t0, t1, t2, t3 = t[:, :H], t[:, H:2 * H], t[:, 2 * H:3 * H], t[:, 3 * H:]
            dh_tot = dh_out + dh_next
            if masked:
                # A padded step copied the state: its cotangent passes straight through to step t-1.
                m = (t_idx < lengths)[:, None]
                dh, dc_in = jnp.where(m, dh_tot, 0.0), jnp.where(m, dc_next, 0.0)
            else:
                dh, dc_in = dh_tot, dc_next
            tc = jnp.tanh(c)
            dc = dc_in + dh * (0.5 * t3 + 0.5) * (1.0 - tc * tc)
            # Each gate's gradient is finished before the concatenation: about 10% faster on this loop
            # alone than concatenating first and multiplying after (benchmarks/NOTES.md, attempt 11).
            dg = jnp.concatenate([dc * t2 * (1.0 - t0 * t0) * q0,
                                  dc * cp * (1.0 - t1 * t1) * q1,
                                  dc * (0.5 * t0 + 0.5) * (1.0 - t2 * t2) * q2,
                                  dh * tc * (1.0 - t3 * t3) * q3], axis=-1)  # (B, 4H)
            dh_prev, dc_prev = dot(dg, w_t, dtype), dc * (0.5 * t1 + 0.5)
            if masked:
                dh_prev = dh_prev + jnp.where(m, 0.0, dh_tot)
                dc_prev = jnp.where(m, dc_prev, dc_next)
            if reset:  # a reset step started from zeros: nothing flows back past it
                dh_prev = jnp.where(r_t[:, None], 0.0, dh_prev)
                dc_prev = jnp.where(r_t[:, None], 0.0, dc_prev)
            return (dh_prev, dc_prev), dg

        xs = (d_hs, ts, cs, c_prev, jnp.arange(T) if masked else None, resets if reset else None)
        (dh0, dc0), dgs = jax.lax.scan(step, (jnp.zeros_like(h0), d_cT), xs, reverse=True,
                                       unroll=max(1, min(unroll, T)))
        B = hs.shape[1]
        d_w = dot(h_prev.reshape(T * B, H).T, dgs.reshape(T * B, 4 * H), dtype)
        d_gx = jax.ops.segment_sum(dgs.reshape(T * B, 4 * H), tokens.reshape(-1), gather) if gather else dgs
        return d_gx, d_w.astype(w_s.dtype), dh0, dc0, None, None, None

    recurrence.defvjp(rec_fwd, rec_bwd)
    return recurrence


def recurrence(gx, w_hh, h0, c0, lengths=None, *, unroll: int = 1, dtype=jnp.float32, resets=None,
               tokens=None):
    """See the module docstring: -> hs (T, B, H), c_T (B, H)."""
    scale = _gate_scale(h0.shape[-1])
    masked = lengths is not None
    lens = jnp.asarray(lengths if masked else jnp.zeros((h0.shape[0],)), jnp.int32)
    reset = resets is not None
    rs = jnp.asarray(resets, bool) if reset else jnp.zeros((1,), bool)
    gather = gx.shape[0] if tokens is not None else 0
    tok = jnp.asarray(tokens, jnp.int32) if gather else jnp.zeros((1,), jnp.int32)
    return _recurrence(int(unroll), jnp.dtype(dtype), masked, reset, gather)(gx * scale, w_hh * scale, h0, c0, lens,
                                                                            rs, tok)
