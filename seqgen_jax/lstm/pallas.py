"""`backend="pallas"`: a persistent LSTM recurrence as one Pallas kernel per direction.

Same contract as `scan.recurrence`: (gx (T, B, 4H), w_hh (H, 4H), h0, c0, lengths) -> (hs, c_T).

Why a kernel: on a GPU an XLA loop runs every time step as a chain of small kernels, so a step costs
launch latency, not FLOPs. Here one launch per batch tile runs all T steps in a `fori_loop`, keeping h
and c in registers; each gate's W_hh tile is loaded once per program when the weights are small
(`resident`), otherwise read from L2 in every step.

Layout rules the GPU lowering enforces and interpret mode does not:
* every block is a power of two and at least 16 (Triton's `dot` minimum): the batch is padded to
  tiles of `block_b` rows and H to a multiple of the column tile `block_h`, so H = 300 pads to 320,
  not 512;
* no slicing of values held in registers: the four gates are four separate blocks (gx is laid out
  (4, T, B, H)), and h is carried as a Python list of column tiles, so `h @ W_k` is a sum of
  (block_b, block_h) x (block_h, block_h) dots and nothing is concatenated.
Padded hidden units stay exactly 0 (zero weights and zero c0 give g = 0, so c = 0 and h = 0), padded
rows have length 0, so neither changes the real units or their gradients.

The backward kernel runs the reverse loop, propagating dh, dc and writing the four gate gradients;
dW_hh is one GEMM over all (t, b) after it, never accumulated inside the loop.

Lowering: the kernels ask for the Triton lowering explicitly (`pallas.triton.CompilerParams`).
JAX 0.10+ defaults `pallas_call` to Mosaic GPU, whose `pallas_call` entry point is deprecated in
favour of `plgpu.kernel` with a warpgroup programming model; this kernel body is plain
load/dot/elementwise/store, which Triton takes as it is. On CPU the same kernels run in interpret
mode (slow; for tests and CPU checks only).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


@dataclass(frozen=True)
class Tiling:
    block_b: int = 16  # batch rows per program (power of two, >= 16)
    block_h: int = 64  # hidden columns per tile (power of two, >= 16)
    num_warps: int = 4
    resident_max_h: int = 64  # load W_hh once per program when the padded H is at most this

    def padded_h(self, H: int) -> int:
        bh = self.tile_h(H)
        return -(-H // bh) * bh

    def tile_h(self, H: int) -> int:
        # A small H gets one tile of the next power of two (>= 16) rather than a mostly empty 64.
        return min(self.block_h, max(16, 1 << (H - 1).bit_length()))


DEFAULT_TILING = Tiling()


def _interpret() -> bool:
    return jax.default_backend() not in ("gpu", "cuda", "rocm")


def _compiler_params(tiling: Tiling):
    if _interpret():
        return None
    from jax.experimental.pallas import triton as pltr

    return pltr.CompilerParams(num_warps=tiling.num_warps, num_stages=1)


def _sig(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def _weight_tiles(w_ref, n: int, bh: int, dtype, resident: bool):
    """(column slices, tile(k, a, b) -> the (bh, bh) block a, b of gate k's weights). Resident tiles are
    loaded once, before the time loop, and stay in registers; otherwise each step reads them (from L2)."""
    cols = [pl.ds(j * bh, bh) for j in range(n)]

    def load(k, a, b):
        return w_ref[k, cols[a], cols[b]].astype(dtype)

    if not resident:
        return cols, load
    W = {(k, a, b): load(k, a, b) for k in range(4) for a in range(n) for b in range(n)}
    return cols, lambda k, a, b: W[(k, a, b)]


def _fwd_kernel(gx_ref, w_ref, h0_ref, c0_ref, len_ref, hs_ref, cs_ref, acts_ref=None, *, T, n, bh, dtype,
                resident):
    """One batch tile: gx_ref (4, T, bB, Hp), w_ref (4, Hp, Hp), h0/c0 (bB, Hp), len (bB,) ->
    hs, cs (T, bB, Hp), and when training acts (4, T, bB, Hp) = the gate activations (i, f, g, o)
    for the backward (inference, e.g. the sampler, skips those writes)."""
    cols, w_tile = _weight_tiles(w_ref, n, bh, dtype, resident)
    lens = len_ref[...]

    def step(t, carry):
        hs_, cs_ = carry
        m = (t < lens)[:, None]
        hq = [h.astype(dtype) for h in hs_]
        new_h, new_c = [], []
        for j in range(n):
            pre = []
            for k in range(4):
                acc = gx_ref[k, t, :, cols[j]]
                for a in range(n):
                    acc = acc + jnp.dot(hq[a], w_tile(k, a, j), preferred_element_type=jnp.float32)
                pre.append(acc)
            i, f, g, o = _sig(pre[0]), _sig(pre[1]), jnp.tanh(pre[2]), _sig(pre[3])
            c = f * cs_[j] + i * g
            h = o * jnp.tanh(c)
            h, c = jnp.where(m, h, hs_[j]), jnp.where(m, c, cs_[j])
            hs_ref[t, :, cols[j]] = h
            cs_ref[t, :, cols[j]] = c
            if acts_ref is not None:
                for k, a in enumerate((i, f, g, o)):
                    acts_ref[k, t, :, cols[j]] = a
            new_h.append(h)
            new_c.append(c)
        return tuple(new_h), tuple(new_c)

    init = (tuple(h0_ref[:, c] for c in cols), tuple(c0_ref[:, c] for c in cols))
    jax.lax.fori_loop(0, T, step, init)


def _bwd_kernel(dhs_ref, acts_ref, cs_ref, c0_ref, dcT_ref, wt_ref, len_ref, dg_ref, dh0_ref, dc0_ref, *,
                T, n, bh, dtype, resident):
    """The reverse loop: dhs (T, bB, Hp), acts (4, T, bB, Hp), cs (T, bB, Hp), c0, dc_T (bB, Hp),
    wt_ref (4, Hp, Hp) = W_k^T, len (bB,) -> dg (4, T, bB, Hp) gate pre-activation gradients, dh0, dc0."""
    cols, w_tile = _weight_tiles(wt_ref, n, bh, dtype, resident)
    lens = len_ref[...]

    def step(s, carry):
        t = T - 1 - s
        dhn, dcn = carry
        m = (t < lens)[:, None]
        tp = jnp.maximum(t - 1, 0)
        dgs, dh_tot, dc_prev = [], [], []
        for j in range(n):
            dht = dhs_ref[t, :, cols[j]] + dhn[j]
            dh = jnp.where(m, dht, 0.0)
            i, f, g, o = (acts_ref[k, t, :, cols[j]] for k in range(4))
            c = cs_ref[t, :, cols[j]]
            cp = jnp.where(t > 0, cs_ref[tp, :, cols[j]], c0_ref[:, cols[j]])
            tc = jnp.tanh(c)
            dc = jnp.where(m, dcn[j], 0.0) + dh * o * (1.0 - tc * tc)
            d = (dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o))
            for k in range(4):
                dg_ref[k, t, :, cols[j]] = d[k]
            dgs.append([x.astype(dtype) for x in d])
            dh_tot.append(dht)
            dc_prev.append(jnp.where(m, dc * f, dcn[j]))
        new_dh = []
        for b in range(n):
            acc = jnp.where(m, 0.0, dh_tot[b])
            for k in range(4):
                for a in range(n):
                    acc = acc + jnp.dot(dgs[a][k], w_tile(k, a, b), preferred_element_type=jnp.float32)
            new_dh.append(acc)
        return tuple(new_dh), tuple(dc_prev)

    zeros = tuple(jnp.zeros((dhs_ref.shape[1], bh), jnp.float32) for _ in range(n))
    dh0, dc0 = jax.lax.fori_loop(0, T, step, (zeros, tuple(dcT_ref[:, c] for c in cols)))
    for j in range(n):
        dh0_ref[:, cols[j]] = dh0[j]
        dc0_ref[:, cols[j]] = dc0[j]


def _call(body, shape4, *, tiling: Tiling, dtype, H: int, ins: str, outs: str, name: str):
    """pallas_call of a kernel body over batch tiles. `ins` / `outs` name each operand's block by letter:
    g = (4, T, bB, Hp) gate-major sequence, s = (T, bB, Hp) sequence, r = (bB, Hp) rows,
    w = (4, Hp, Hp) weights (the same block for every program), l = (bB,) lengths."""
    _, T, Bp, Hp = shape4
    bB, bh = tiling.block_b, tiling.tile_h(H)
    specs = {"g": pl.BlockSpec((4, T, bB, Hp), lambda b: (0, 0, b, 0)),
             "s": pl.BlockSpec((T, bB, Hp), lambda b: (0, b, 0)),
             "r": pl.BlockSpec((bB, Hp), lambda b: (b, 0)),
             "w": pl.BlockSpec((4, Hp, Hp), lambda b: (0, 0, 0)),
             "l": pl.BlockSpec((bB,), lambda b: (b,))}
    shapes = {"g": (4, T, Bp, Hp), "s": (T, Bp, Hp), "r": (Bp, Hp)}
    kernel = functools.partial(body, T=T, n=Hp // bh, bh=bh, dtype=dtype, resident=Hp <= tiling.resident_max_h)
    return pl.pallas_call(
        kernel, grid=(Bp // bB,), in_specs=[specs[c] for c in ins], out_specs=[specs[c] for c in outs],
        out_shape=[jax.ShapeDtypeStruct(shapes[c], jnp.float32) for c in outs],
        interpret=_interpret(), compiler_params=_compiler_params(tiling), name=name)


def _forward(gx4, w4, h0, c0, lens, *, tiling: Tiling, dtype, H: int, save: bool):
    outs = _call(_fwd_kernel, gx4.shape, tiling=tiling, dtype=dtype, H=H, ins="gwrrl", outs="ssg" if save else "ss",
                 name="lstm_fwd" if save else "lstm_infer")(gx4, w4, h0, c0, lens)
    return tuple(outs) if save else (*outs, None)


def _backward(dhs, acts, cs, c0, dcT, wt4, lens, *, tiling: Tiling, dtype, H: int):
    return _call(_bwd_kernel, acts.shape, tiling=tiling, dtype=dtype, H=H, ins="sgsrrwl", outs="grr",
                 name="lstm_bwd")(dhs, acts, cs, c0, dcT, wt4, lens)


@functools.lru_cache(maxsize=None)
def _core(tiling: Tiling, dtype, H: int):
    """The padded recurrence (gx4 (4, T, Bp, Hp), w4 (4, Hp, Hp), h0, c0 (Bp, Hp), lens (Bp,)) ->
    hs (T, Bp, Hp), c_T (Bp, Hp), under a custom VJP whose backward is the reverse kernel."""

    def run(gx4, w4, h0, c0, lens, save):
        hs, cs, acts = _forward(gx4, w4, h0, c0, lens, tiling=tiling, dtype=dtype, H=H, save=save)
        return (hs, cs[-1]), (acts, cs, hs)

    @jax.custom_vjp
    def core(gx4, w4, h0, c0, lens):
        return run(gx4, w4, h0, c0, lens, False)[0]

    def core_fwd(gx4, w4, h0, c0, lens):
        out, (acts, cs, hs) = run(gx4, w4, h0, c0, lens, True)
        return out, (w4, h0, c0, lens, acts, cs, hs)

    def core_bwd(res, cot):
        w4, h0, c0, lens, acts, cs, hs = res
        d_hs, d_cT = cot
        # A carried state written at a padded step is the state at the row's end, so c_T's cotangent
        # enters at the last step and the reverse loop passes it back to the row's last real step.
        dg, dh0, dc0 = _backward(d_hs, acts, cs, c0, d_cT, jnp.swapaxes(w4, 1, 2), lens,
                                 tiling=tiling, dtype=dtype, H=H)
        T, Bp, Hp = hs.shape
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0).reshape(T * Bp, Hp)
        # dW_hh: one (Hp, T*Bp) x (T*Bp, 4*Hp) GEMM after the loop.
        d_w = jnp.einsum("nh,knj->khj", h_prev.astype(dtype), dg.reshape(4, T * Bp, Hp).astype(dtype),
                         preferred_element_type=jnp.float32)
        return dg, d_w.astype(w4.dtype), dh0, dc0, None

    core.defvjp(core_fwd, core_bwd)
    return core


def recurrence(gx, w_hh, h0, c0, lengths=None, *, unroll: int = 1, dtype=jnp.float32,
               tiling: Tiling = DEFAULT_TILING):
    """See `scan.recurrence`; `unroll` is ignored by contract (the loop lives in the kernel)."""
    del unroll
    T, B, H4 = gx.shape
    H = H4 // 4
    Hp = tiling.padded_h(H)
    Bp = -(-B // tiling.block_b) * tiling.block_b
    lens = jnp.full((B,), T, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    # Padding and the gate-major layout are plain XLA ops outside the custom VJP; autodiff undoes them.
    gx4 = jnp.pad(jnp.moveaxis(gx.reshape(T, B, 4, H), 2, 0), ((0, 0), (0, 0), (0, Bp - B), (0, Hp - H)))
    w4 = jnp.pad(jnp.moveaxis(w_hh.reshape(H, 4, H), 1, 0), ((0, 0), (0, Hp - H), (0, Hp - H)))
    h0p = jnp.pad(h0, ((0, Bp - B), (0, Hp - H)))
    c0p = jnp.pad(c0, ((0, Bp - B), (0, Hp - H)))
    lens = jnp.pad(lens, (0, Bp - B))
    hs, cT = _core(tiling, jnp.dtype(dtype), H)(gx4, w4, h0p, c0p, lens)
    return hs[:, :B, :H], cT[:B, :H]
