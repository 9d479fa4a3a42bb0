"""LSTM backends behind one table, and `resolve`, the one place that picks a backend and unroll.

A backend runs the recurrence of one layer. Two contracts exist:
* `recurrence(gx, w_hh, h0, c0, lengths=None, *, unroll, dtype) -> (hs, c_T)` with gx (T, B, 4H) the
  input projection (scan, pallas); the model folds the first layer's projection into the embedding
  (on CPU the scan backend also takes `tokens=` and reads that (V, 4H) table inside its loop);
* `layer(p, xs (T, B, D), h0, c0) -> (hs, (h_T, c_T))` for backends that project the input themselves
  (cudnn).
A new backend is one module here and one `Backend` row in `BACKENDS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError

GPU_PLATFORMS = ("gpu", "cuda", "rocm")


@dataclass(frozen=True)
class Backend:
    name: str
    platforms: tuple[str, ...]  # JAX platforms it runs on
    precisions: tuple[str, ...]
    takes_unroll: bool  # whether ModelConfig.unroll means anything to it
    dropout: bool  # supports dropout between layers
    resets: bool  # supports zeroing the state inside a sequence (the packed feed)
    note: str
    recurrence: Callable | None = None
    layer: Callable | None = None


def _scan_recurrence(*a, **k):
    from .scan import recurrence

    return recurrence(*a, **k)


def _pallas_recurrence(*a, **k):
    from .pallas import recurrence

    return recurrence(*a, **k)


def _cudnn_layer(*a, **k):
    from .cudnn import lstm_layer_cudnn

    return lstm_layer_cudnn(*a, **k)


BACKENDS: dict[str, Backend] = {
    "scan": Backend("scan", ("cpu", "gpu", "cuda", "rocm", "tpu"), ("fp32", "bf16"), True, True, True,
                    "lax.scan with a hand-written VJP; the default everywhere", recurrence=_scan_recurrence),
    "pallas": Backend("pallas", ("gpu", "cuda", "cpu"), ("fp32", "bf16"), False, True, False,
                      "persistent Pallas (Triton) kernel, loop over time inside one launch; on CPU it runs "
                      "in interpret mode, for checks only", recurrence=_pallas_recurrence),
    "cudnn": Backend("cudnn", ("gpu", "cuda"), ("fp32",), False, True, False,
                     "cuDNN through jax.experimental.rnn; NVIDIA GPUs, fp32", layer=_cudnn_layer),
}
NAMES = ("auto",) + tuple(BACKENDS)

# What `auto` picks per platform. A backend enters here only from a measurement on that platform
# (benchmarks/gpu_round.py; the H200 round of 2026-11-27 is in benchmarks/results/ and the README).
AUTO = {"cpu": "scan", "gpu": "scan", "cuda": "scan", "rocm": "scan", "tpu": "scan"}
# Where the persistent Pallas kernel beat the scan on that H200: H = 16, train steps of 40-200 time
# steps, 1.8-2.0x in fp32 (TF32) and bf16 (tied at 10 steps). At H = 300 it was 12x slower (W_hh no
# longer fits on chip, the kernel's design limit is H <= 64), and it lost at one token a step
# (sampling). Hidden sizes between 16 and 64 were not measured; 64 is the kernel's on-chip bound.
# Only on one device: a pallas_call is opaque to SPMD partitioning, so a sharded batch would be gathered.
AUTO_PALLAS = {"gpu": {"max_hidden": 64, "min_steps": 32}, "cuda": {"max_hidden": 64, "min_steps": 32}}
# Unroll for the scan when ModelConfig.unroll is 0: unrolling pays on GPU, where each loop iteration
# costs kernel launches (H200: unroll 8 at 1.6-2.0x unroll 1 per time step; 16 within +-10% of 8,
# better at 10 steps, worse at 200 and with longer compiles); on CPU it gained nothing
# (benchmarks/NOTES.md, attempt 8).
AUTO_UNROLL = {"cpu": 1, "gpu": 8, "cuda": 8, "rocm": 8, "tpu": 8}


def auto_backend(plat: str, *, hidden: int | None = None, steps: int | None = None, dropout: float = 0.0,
                 devices: int | None = None, resets: bool = False) -> str:
    """What `--backend auto` runs for a layer of `hidden` units over `steps` time steps on `plat`."""
    rule = AUTO_PALLAS.get(plat)
    if rule and hidden is not None and steps is not None and dropout == 0.0 and not resets:
        if devices is None:
            import jax

            devices = jax.device_count()
        if devices == 1 and hidden <= rule["max_hidden"] and steps >= rule["min_steps"]:
            return "pallas"
    return AUTO.get(plat, "scan")


@dataclass(frozen=True)
class Resolved:
    backend: Backend
    unroll: int


def platform() -> str:
    import jax

    return jax.default_backend()


def resolve(backend: str, *, precision: str = "fp32", unroll: int = 0, dropout: float = 0.0,
            platform_name: str | None = None, hidden: int | None = None, steps: int | None = None,
            devices: int | None = None, resets: bool = False) -> Resolved:
    """The backend and unroll that run a model on `platform_name` (default: JAX's default backend).

    `hidden` and `steps` (the layer's width and the sequence's static length) let `auto` pick by
    shape; without them it picks the platform's default. Refuses what a backend cannot do rather
    than ignoring it."""
    plat = platform_name or platform()
    name = (auto_backend(plat, hidden=hidden, steps=steps, dropout=dropout, devices=devices, resets=resets)
            if backend == "auto" else backend)
    if name not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of {', '.join(NAMES)}")
    b = BACKENDS[name]
    if plat not in b.platforms:
        raise UserError(f"--backend {name} does not run on {plat}; use --backend auto (it picks "
                        f"{AUTO.get(plat, 'scan')} here)")
    if precision not in b.precisions:
        raise UserError(f"--backend {name} supports --precision {' or '.join(b.precisions)}, not {precision}")
    if unroll > 0 and not b.takes_unroll:
        raise UserError(f"--unroll {unroll} means nothing to --backend {name} (its loop is not a lax.scan); "
                        "leave --unroll at 0")
    if dropout > 0 and not b.dropout:
        raise UserError(f"--backend {name} does not support --dropout")
    if resets and not b.resets:
        raise UserError(f"--backend {name} cannot reset the state inside a row, which --feed packed needs; use "
                        "--backend scan (or auto) with --feed packed, or --feed bucket with this backend")
    u = unroll if unroll > 0 else AUTO_UNROLL.get(plat, 1)
    return Resolved(b, u if b.takes_unroll else 1)


def check_name(backend: str) -> None:
    """Config validation: the name only (the platform is known when the model runs)."""
    if backend not in NAMES:
        raise UserError(f"--backend {backend!r} must be one of {', '.join(NAMES)}")
