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


# d gate / d scaled pre-activation, from the gate tanh t: 0.5 * (1 - t^2) for the sigmoid gates
# (sigmoid = 0.5 * t + 0.5) and (1 - t^2) for the cell input.
_GATE_DERIV = (0.5, 0.5, 1.0, 0.5)


@functools.lru_cache(maxsize=None)
def _recurrence(unroll: int, dtype, masked: bool, reset: bool = False, gather: int = 0):
    """hs (T, B, H), c_T = recurrence(gx (T, B, 4H), w_s (H, 4H), h0, c0, lengths) with a hand-written VJP.

    gx and w_s are already gate-scaled (`_gate_scale`). Scan's own transpose accumulates dW_hh with an
    (H, B) x (B, 4H) matmul inside every backward step; here the backward loop only propagates dh
    through W_hh and stores the gate gradients, and the weight gradient is one (H, T*B) x (T*B, 4H)
    matmul after the loop (benchmarks/NOTES.md, attempt 4). `masked` is static so the unmasked loop
    (the training default) carries no select; so is `reset`.

    The forward pass under differentiation stores what the backward multiplies by, not the gates it
    was made from: per step P (B, 4H) with dg = [dc, dc, dc, dh] * P, A = o * (1 - tanh(c)^2) and the
    forget gate. The backward step is then a few multiplies (no tanh(c) recomputed, no gate arithmetic),
    and it writes each step's gate gradient over the P it just read, so no zero-filled (T, B, 4H)
    output buffer is needed: together 11-13% more tokens/s at (300, 300) on CPU (NOTES, attempt 39).

    `gather` = V > 0: gx is a (V, 4H) table read at `tokens` inside the loop. The (T, B, 4H) input is then
    never written: its gather and gate scaling cost about as much as a third of the forward loop at
    (300, 300) (NOTES, attempt 35). The table's gradient is a scatter-add of each step's gate gradient
    into a (V, 4H) carry inside the backward loop, while the step's rows are still in cache (after the
    loop, XLA:CPU copied all T*B rows once more for the scatter)."""
    q0, q1, q2, q3 = _GATE_DERIV

    def fwd_loop(gx, w_s, h0, c0, lengths, resets, tokens, save: bool):
        H = h0.shape[-1]

        def step(carry, xs):
            h, c = carry
            g_t, t_idx, r_t = xs
            if gather:
                g_t = jnp.take(gx, g_t, axis=0, mode="clip")  # (B, 4H) rows of the table
            if reset:
                h, c = jnp.where(r_t[:, None], 0.0, h), jnp.where(r_t[:, None], 0.0, c)
            t = jnp.tanh(g_t + dot(h, w_s, dtype))  # (B, 4H)
            t0, t1, t2, t3 = t[:, :H], t[:, H:2 * H], t[:, 2 * H:3 * H], t[:, 3 * H:]
            i, f, o = 0.5 * t0 + 0.5, 0.5 * t1 + 0.5, 0.5 * t3 + 0.5
            c_new = f * c + i * t2
            tc = jnp.tanh(c_new)
            h_new = o * tc
            if masked:
                m = (t_idx < lengths)[:, None]
                h_new, c_new = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
            if not save:
                return (h_new, c_new), h_new
            # c is the state this step started from (zero after a reset), so a reset needs nothing more.
            p = jnp.concatenate([t2 * (1.0 - t0 * t0) * q0, c * (1.0 - t1 * t1) * q1,
                                 i * (1.0 - t2 * t2) * q2, tc * (1.0 - t3 * t3) * q3], axis=-1)  # (B, 4H)
            return (h_new, c_new), (h_new, p, o * (1.0 - tc * tc), f)

        T = tokens.shape[0] if gather else gx.shape[0]
        # The step index and reset flags ride along only when needed: the default loop is the plain graph.
        xs = (tokens if gather else gx, jnp.arange(T) if masked else None, resets if reset else None)
        (_, c_T), out = jax.lax.scan(step, (h0, c0), xs, unroll=max(1, min(unroll, T)))
        return out, c_T

    @jax.custom_vjp
    def recurrence(gx, w_s, h0, c0, lengths, resets, tokens):
        return fwd_loop(gx, w_s, h0, c0, lengths, resets, tokens, False)

    def rec_fwd(gx, w_s, h0, c0, lengths, resets, tokens):
        (hs, P, A, F), c_T = fwd_loop(gx, w_s, h0, c0, lengths, resets, tokens, True)
        return (hs, c_T), (w_s, h0, hs, P, A, F, lengths, resets, tokens)

    def rec_bwd(res, cot):
        w_s, h0, hs, P, A, F, lengths, resets, tokens = res
        d_hs, d_cT = cot
        T, B, H = hs.shape
        w_t = w_s.T

        def body(s, carry):
            dh_next, dc_next, buf, d_tab = carry
            t = T - 1 - s
            dh_tot = d_hs[t] + dh_next
            if masked:
                # A padded step copied the state: its cotangent passes straight through to step t-1.
                m = (t < lengths)[:, None]
                dh, dc_in = jnp.where(m, dh_tot, 0.0), jnp.where(m, dc_next, 0.0)
            else:
                dh, dc_in = dh_tot, dc_next
            dc = dc_in + dh * A[t]
            # One concatenation of the two cotangents times the stored P: fewer passes than four
            # products concatenated (NOTES, attempt 39).
            dg = jnp.concatenate([dc, dc, dc, dh], axis=-1) * jax.lax.dynamic_index_in_dim(buf, t, 0, False)
            dh_prev, dc_prev = dot(dg, w_t, dtype), dc * F[t]
            if masked:
                dh_prev = dh_prev + jnp.where(m, 0.0, dh_tot)
                dc_prev = jnp.where(m, dc_prev, dc_next)
            if reset:  # a reset step started from zeros: nothing flows back past it
                dh_prev = jnp.where(resets[t][:, None], 0.0, dh_prev)
                dc_prev = jnp.where(resets[t][:, None], 0.0, dc_prev)
            if gather:
                d_tab = d_tab + jax.ops.segment_sum(dg, tokens[t], gather)
            # P[t] has been read; its slot now holds the gate gradient dg[t].
            return dh_prev, dc_prev, jax.lax.dynamic_update_index_in_dim(buf, dg, t, 0), d_tab

        d_tab0 = jnp.zeros((gather, 4 * H), P.dtype) if gather else None
        dh0, dc0, dgs, d_tab = jax.lax.fori_loop(0, T, body, (jnp.zeros_like(h0), d_cT, P, d_tab0),
                                                 unroll=max(1, min(unroll, T)))
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, B, H)
        if reset:  # the state each step really started from
            h_prev = jnp.where(resets[..., None], 0.0, h_prev)
        d_w = dot(h_prev.reshape(T * B, H).T, dgs.reshape(T * B, 4 * H), dtype)
        return d_tab if gather else dgs, d_w.astype(w_s.dtype), dh0, dc0, None, None, None

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
