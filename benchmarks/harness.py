"""Timing that survives a noisy machine: variants interleaved round by round, each repeat long enough
to swamp the timer, and a lead claimed only when it survives the spread.

    stats = interleaved({"jax": (fn, sync), "torch_careful": (fn, sync)}, work=B * T, repeats=5)
    stats["jax"] -> {"median": tokens/s, "min": ..., "max": ..., "repeats": 5}
    lead(stats["jax"], stats["torch_careful"]) -> True only if JAX's slowest repeat beats the other's fastest
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

Variant = tuple[Callable[[], Any], Callable[[Any], None]]  # (run once, wait for its result)


def _once(fn, sync, inner: int) -> float:
    t = time.perf_counter()
    out = None
    for _ in range(inner):
        out = fn()
    sync(out)
    return (time.perf_counter() - t) / inner


# Pause before each variant's turn: PyTorch's OpenMP threads spin for a while after their last op, and a
# JAX variant started inside that window ran 14% slower (51.5 k against 44.3 k tokens/s on a (300, 300)
# epoch; benchmarks/NOTES.md, attempt 32). The pause lets every variant start on idle cores.
SETTLE_SECONDS = 0.3


def interleaved(variants: dict[str, Variant], *, work, repeats: int = 5, min_seconds: float = 0.05,
                warmup: int = 1, settle: float | None = None) -> dict[str, dict]:
    """Rates (work per second) of each variant: after warm-up, every round runs each variant once (in an
    order rotated from round to round, so no variant always follows the same one), each for enough
    back-to-back calls to last about `min_seconds`, after a `settle` pause. `work`: per call, one
    figure for every variant or a dict by variant (the course's sampler runs fewer steps)."""
    names = list(variants)
    settle = SETTLE_SECONDS if settle is None else settle
    inner = {}
    for name, (fn, sync) in variants.items():
        for _ in range(warmup):
            sync(fn())
        one = _once(fn, sync, 1)
        inner[name] = max(1, int(min_seconds / max(one, 1e-9)))
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, sync = variants[name]
            if settle and len(names) > 1:
                time.sleep(settle)
            w = work[name] if isinstance(work, dict) else work
            rates[name].append(w / _once(fn, sync, inner[name]))
    return {n: summary(v) for n, v in rates.items()}


def summary(rates: list[float]) -> dict:
    a = np.asarray(rates, float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "repeats": int(a.size)}


def lead(ours: dict | None, theirs: dict | None) -> bool | None:
    """A lead only where our slowest repeat beats their fastest."""
    if not ours or not theirs:
        return None
    return bool(ours["min"] > theirs["max"])


def ratio(ours: dict | None, theirs: dict | None) -> float | None:
    if not ours or not theirs:
        return None
    return ours["median"] / theirs["median"]


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def fmt_stats(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{fmt_rate(s['median'])} ({fmt_rate(s['min'])}–{fmt_rate(s['max'])})"
