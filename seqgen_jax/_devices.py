"""One XLA:CPU device per core, set before JAX starts its CPU backend.

XLA:CPU splits each operation of the LSTM step over the cores, but for the small (B, 4H) blocks of
this model that bought nothing: a step ran as fast pinned to one core as on two. Exposing the cores
as separate single-threaded devices (Eigen's own multithreading off, so the devices do not compete
for the cores) and running data parallel from the host (parallel.HostParallelStep) gives each core its
own rows: 2.5-2.8 M tokens/s against 1.1-2.3 M on the (32, 16) benchmark rows, and 2.0 M against
1.4 M tokens/s over a brackets epoch on 2 cores (benchmarks/NOTES.md). The flags only change host
devices; on a GPU machine the GPUs stay the default devices.

Wider layers are the exception: from H = 128 one device running K steps per program with XLA's
own threads beat the per-core devices on the packed feed (2 cores, brackets epochs, interleaved:
H = 128 181 k against 146 k tokens/s, H = 300 54 k against 43 k; at H = 64 the per-core devices
won, 569 k against 404 k; benchmarks/NOTES.md, "CPU layout by width"). `train()` therefore calls
`prefer_one_device_for(hidden)` once the model is known, before JAX starts its backend.

SEQGEN_CPU_DEVICES=N overrides the count (1 turns it off) and switches off the choice by width; an
XLA_FLAGS that already sets --xla_force_host_platform_device_count is left alone. None of this has
an effect once JAX's CPU backend has started.
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
from pathlib import Path

_FLAG = "--xla_force_host_platform_device_count"
_EIGEN_OFF = "--xla_cpu_multi_thread_eigen=false"
_ADDED = "SEQGEN_ADDED_XLA_FLAGS"  # what configure_host_devices appended to XLA_FLAGS, for child processes
MAX_DEFAULT = 8  # more devices than this split a 10k-token batch into slivers
# From this width on, one device beat one device per core (see the module docstring).
ONE_DEVICE_FROM_HIDDEN = 128
_state = {"user_flags": None, "auto": False}


def default_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_host_memory() -> bool:
    """Keep freed host memory in the process, so a step's buffers reuse pages already mapped.

    XLA:CPU allocates each execution's temporaries as one block (184 MB for a (300, 300) step of
    1000 x 10 tokens) and frees it after. glibc hands blocks that large to the kernel (mmap / munmap)
    whatever M_MMAP_THRESHOLD says when they come from a thread's arena, so every step faulted in
    45,000 fresh zeroed pages: ~20% of that step (benchmarks/NOTES.md, attempt 34). One arena, no mmap
    and no trimming below 2 GiB keep the pages. Only for the one-device layout (wide layers, where
    blocks that large arise): with one arena, threads that allocate at once wait on its lock, which
    doubled the time to compile 12 bucket shapes on threads (13 s against 22-31 s); the per-core
    devices' blocks are small. Process-wide, so PyTorch in the same process (the benchmarks) gets the
    same allocator. Best effort: glibc only; SEQGEN_HOST_MALLOC=system leaves the allocator alone.
    Must run before XLA's threads first allocate (before the backend starts)."""
    if os.environ.get("SEQGEN_HOST_MALLOC", "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(k, v) == 1 for k, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                                 (_M_TRIM_THRESHOLD, 2**31 - 1)))


def configure_host_devices() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    added = os.environ.get(_ADDED, "")
    if added and flags.endswith(added):
        # Flags a parent seqgen process added (bars.py, the experiments, a benchmark's children): this
        # process chooses its own layout. Inheriting them once kept wide models off the one-device layout.
        flags = flags[: -len(added)].strip()
        os.environ["XLA_FLAGS"] = flags
    os.environ.pop(_ADDED, None)
    if _FLAG in flags:  # the user's count stands
        if re.search(rf"{_FLAG}=1(\s|$)", flags):
            reuse_host_memory()
        return
    raw = os.environ.get("SEQGEN_CPU_DEVICES", "")
    _state.update(user_flags=flags, auto=not raw)
    try:
        n = int(raw) if raw else default_count()
    except ValueError:
        n = default_count()
    if n == 1:
        reuse_host_memory()
    if n > 1:
        extra = f"{_FLAG}={n}"
        if "xla_cpu_multi_thread_eigen" not in flags:
            extra += f" {_EIGEN_OFF}"
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
        os.environ[_ADDED] = extra


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # a JAX without this probe: assume started, change nothing
        return True


def prefer_one_device_for(hidden: int) -> bool:
    """One XLA:CPU device using every core instead of one device per core, for layers of `hidden`
    units or more, where the layout was chosen by default and JAX's backend has not started. Returns
    whether it switched."""
    if not _state["auto"] or hidden < ONE_DEVICE_FROM_HIDDEN or default_count() == 1 or _backend_started():
        return False
    os.environ["XLA_FLAGS"] = (_state["user_flags"] or "").strip()
    os.environ.pop(_ADDED, None)
    _state["auto"] = False
    reuse_host_memory()
    return True


def enable_compilation_cache() -> None:
    """Persistent XLA cache: a second run of the same shapes skips compilation."""
    import jax

    path = os.environ.get("SEQGEN_JAX_CACHE", str(Path.home() / ".cache" / "seqgen_jax" / "xla"))
    # Programs that compile faster than this are not worth a disk entry for a user; the test suite sets
    # 0, since it compiles the same tiny programs in dozens of processes and runs.
    try:
        least = float(os.environ.get("SEQGEN_JAX_CACHE_MIN_SECONDS", "0.5"))
    except ValueError:
        least = 0.5
    try:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", least)
    except Exception:  # an older/newer JAX without these options still trains
        pass
