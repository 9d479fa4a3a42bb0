"""One XLA:CPU device per core, set before JAX starts its CPU backend.

XLA:CPU splits each operation of the LSTM step over the cores, but for the small (B, 4H) blocks of
this model that bought nothing: a step ran as fast pinned to one core as on two. Exposing the cores
as separate single-threaded devices (Eigen's own multithreading off, so the devices do not compete
for the cores) and running data parallel from the host (parallel.HostParallelStep) gives each core its
own rows: 2.5-2.8 M tokens/s against 1.1-2.3 M on the (32, 16) benchmark rows, and 2.0 M against
1.4 M tokens/s over a brackets epoch on 2 cores (benchmarks/NOTES.md). The flags only change host
devices; on a GPU machine the GPUs stay the default devices.

Wide layers with large steps keep the per-core devices but not glibc's default allocator: their
steps' temporaries are blocks of tens of MB, which glibc maps fresh from the kernel at every call.
`train()` calls `prepare_for_step(...)` once the model and budget are known, before JAX starts its
backend, and freed host memory then stays in the process (`reuse_host_memory`). Brackets epochs at
(300, 300), packed feed, 2 cores, 3 alternating rounds: 58.6-59.5 k tokens/s per core with the
memory kept, 50.4-54.3 k on one device using both cores (the previous choice for layers from
H = 128), 44-46 k per core with glibc's default (benchmarks/NOTES.md, attempt 38).

SEQGEN_CPU_DEVICES=N overrides the count (1: one device using every core, which always keeps freed
host memory); an XLA_FLAGS that already sets --xla_force_host_platform_device_count is left alone.
SEQGEN_HOST_MALLOC=keep or =system forces the allocator setting on or off. None of this has an effect
once JAX's CPU backend has started.
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
# From this many tokens per device and step times the layers' units, keeping freed host memory pays
# (`keeps_host_memory_for`).
KEEP_MEMORY_FROM_TOKEN_UNITS = 400_000
_state = {"kept": False}  # whether reuse_host_memory applied its setting in this process


def default_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def host_memory_kept() -> bool:
    """Whether this process applied `reuse_host_memory`."""
    return _state["kept"]


def host_malloc() -> str:
    """SEQGEN_HOST_MALLOC: "system" (glibc's defaults), "keep" (always reuse_host_memory) or "" (by layout)."""
    return os.environ.get("SEQGEN_HOST_MALLOC", "").strip().lower()


def reuse_host_memory() -> bool:
    """Keep freed host memory in the process, so a step's buffers reuse pages already mapped.

    XLA:CPU allocates each execution's temporaries as one block (184 MB for a (300, 300) step of
    1000 x 10 tokens) and frees it after. glibc hands blocks that large to the kernel (mmap / munmap)
    whatever M_MMAP_THRESHOLD says when they come from a thread's arena, so every step faulted in
    45,000 fresh zeroed pages: ~20% of that step (benchmarks/NOTES.md, attempt 34). One arena, no mmap
    and no trimming below 2 GiB keep the pages. Only for large steps (`prepare_for_step`) and the
    one-device layout: with one arena, threads that allocate at once wait on its lock, which doubled
    the time to compile 12 bucket shapes of a (32, 16) model on threads (13 s against 22-31 s), whose
    per-step blocks are small. Process-wide, so PyTorch in the same process (the benchmarks) gets the
    same allocator. Best effort: glibc only; SEQGEN_HOST_MALLOC=system leaves the allocator alone
    (=keep applies it whatever the layout). Must run before XLA's threads first allocate (before the
    backend starts)."""
    if host_malloc() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(k, v) == 1 for k, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
    _state["kept"] = _state["kept"] or ok
    return ok


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
        if host_device_count() == 1 or host_malloc() == "keep":
            reuse_host_memory()
        return
    raw = os.environ.get("SEQGEN_CPU_DEVICES", "")
    try:
        n = int(raw) if raw else default_count()
    except ValueError:
        n = default_count()
    if n == 1 or host_malloc() == "keep":
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


def host_device_count() -> int:
    """The XLA:CPU device count this process's flags ask for (1 when none), read before the backend starts."""
    m = re.search(rf"{_FLAG}=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else 1


def keeps_host_memory_for(hidden: int, layers: int, tokens_per_step: int, devices: int) -> bool:
    """Whether a step is large enough for `reuse_host_memory` to pay: its temporaries grow with the
    tokens each device takes per step times the layers' units (about 61 bytes per token and unit:
    184 MB for 10,000 tokens at H = 300). Measured per-core whole runs (NOTES, attempt 38): 262 k
    token-units per device (the text preset) gained nothing; 524 k (IMDb) 8-12%; 1.5 M (brackets at
    (300, 300)) 25%."""
    return tokens_per_step / max(1, devices) * hidden * layers >= KEEP_MEMORY_FROM_TOKEN_UNITS


def prepare_for_step(hidden: int, layers: int, tokens_per_step: int, devices: int | None = None) -> bool:
    """Keep freed host memory (`reuse_host_memory`) when a step is large (`keeps_host_memory_for`),
    whatever the device count. Must run before anything starts JAX's backend (`jax.process_count()`
    does: until 2026-12-07 `train()` asked it first, so the layout choice for wide layers never ran).
    Returns whether it applied the setting now."""
    devices = host_device_count() if devices is None else devices
    if (not keeps_host_memory_for(hidden, layers, tokens_per_step, devices) or host_memory_kept()
            or host_malloc() == "system" or not _host_only() or _backend_started()):
        return False
    return reuse_host_memory()


def _host_only() -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS says so, or no accelerator plugin is installed.
    Asked without starting the backend; an accelerator process keeps glibc's allocator (its steps'
    temporaries live on the device, and one arena would slow its threaded compilation)."""
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
    return not any(importlib.util.find_spec(p) for p in plugins)


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
