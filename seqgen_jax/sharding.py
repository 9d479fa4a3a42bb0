"""Data parallelism over a 1-D device mesh: batches are sharded on their leading axis, parameters and
optimiser state replicated, and XLA inserts the gradient all-reduce. On CPU the mesh's devices are
the cores (`_devices.py`) and the host drives the data parallelism instead (train.HostParallelStep).

Multi-host: `maybe_initialize_distributed` starts JAX's own runtime (SLURM or explicit coordinator
flags); every process computes the same epoch order, and `make_array_from_callback` lets each one
supply only the shards its devices hold."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from .errors import UserError


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
    """Explicit flags, or SLURM / cluster auto-detection when several tasks were launched."""
    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize()


def make_mesh(devices: str | int = "all") -> jax.sharding.Mesh:
    avail = jax.devices()
    if devices in ("all", None):
        n = len(avail)
    else:
        try:
            n = int(devices)
        except ValueError:
            raise UserError(f"--devices {devices!r} must be 'all' or a number") from None
        if not 1 <= n <= len(avail):
            raise UserError(f"--devices {n} is not available: this machine has {len(avail)} "
                            f"{jax.default_backend()} device(s)")
    return jax.sharding.Mesh(np.array(avail[:n]), ("data",))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host array -> global array; works when the sharding spans other processes' devices too."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
