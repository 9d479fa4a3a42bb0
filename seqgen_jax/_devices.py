"""One XLA:CPU device per core, set before JAX starts its CPU backend.

XLA:CPU splits each operation of the LSTM step over the cores, but for the small (B, 4H) blocks of
this model that bought nothing: a step ran as fast pinned to one core as on two. Exposing the cores
as separate single-threaded devices (Eigen's own multithreading off, so the devices do not compete
for the cores) and running data parallel from the host (parallel.HostParallelStep) gives each core its
own rows: 2.5-2.8 M tokens/s against 1.1-2.3 M on the (32, 16) benchmark rows, and 2.0 M against
1.4 M tokens/s over a brackets epoch on 2 cores (benchmarks/NOTES.md). The flags only change host
devices; on a GPU machine the GPUs stay the default devices.

SEQGEN_CPU_DEVICES=N overrides the count (1 turns it off); an XLA_FLAGS that already sets
--xla_force_host_platform_device_count is left alone. It has no effect if JAX's CPU backend was
started before seqgen_jax was imported.
"""
from __future__ import annotations

import os
from pathlib import Path

_FLAG = "--xla_force_host_platform_device_count"
MAX_DEFAULT = 8  # more devices than this split a 10k-token batch into slivers


def default_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT))


def configure_host_devices() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        return
    raw = os.environ.get("SEQGEN_CPU_DEVICES", "")
    try:
        n = int(raw) if raw else default_count()
    except ValueError:
        n = default_count()
    if n > 1:
        extra = f"{_FLAG}={n}"
        if "xla_cpu_multi_thread_eigen" not in flags:
            extra += " --xla_cpu_multi_thread_eigen=false"
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()


def enable_compilation_cache() -> None:
    """Persistent XLA cache: a second run of the same shapes skips compilation."""
    import jax

    path = os.environ.get("SEQGEN_JAX_CACHE", str(Path.home() / ".cache" / "seqgen_jax" / "xla"))
    try:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception:  # an older/newer JAX without these options still trains
        pass
