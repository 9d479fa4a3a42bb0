"""Device placement: one `Placement` per mesh places the train state, the bucket matrices and each
batch's row indices, and makes the train and eval steps. Callers never combine sharding helpers.

Two strategies behind the one object:
* SPMD (GPUs, TPUs, several hosts, one CPU device): batches sharded on their leading axis over a 1-D
  mesh, the state replicated, and XLA inserts the gradient all-reduce.
* Host-driven data parallelism (several XLA:CPU devices, one per core, `_devices.py`): in-graph
  collectives between XLA:CPU devices share one small thread pool, and a psum in the step deadlocked
  there (rendezvous timeout) in an epoch of mixed bucket shapes; `HostParallelStep` has no collectives
  at all (benchmarks/NOTES.md).

Multi-host: `maybe_initialize_distributed` starts JAX's own runtime (SLURM or explicit coordinator
flags); every process computes the same epoch order, and `make_array_from_callback` lets each one
supply only the shards its devices hold.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec as P

from .errors import UserError
from .step import apply_grads, dropout_key, local_grads, masked_nll, step_fn


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Explicit flags, or SLURM / cluster auto-detection when several tasks were launched. Returns
    whether the multi-process runtime was started."""
    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize()
        return True
    return False


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


def _put(x: np.ndarray, sharding) -> jax.Array:
    """Host array -> global array; works when the sharding spans other processes' devices too."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


class Placement:
    """Where a run's arrays live and how its steps run, for one mesh."""

    def __init__(self, mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh if mesh is not None else make_mesh(1)
        self.devices = list(self.mesh.devices.flat)
        self.n_devices = len(self.devices)
        self.host_parallel = (self.n_devices > 1 and jax.process_count() == 1
                              and all(d.platform == "cpu" for d in self.devices))
        self._replicated = NamedSharding(self.mesh, P())
        self._batch = NamedSharding(self.mesh, P("data"))

    @classmethod
    def for_devices(cls, devices: str | int = "all") -> "Placement":
        return cls(make_mesh(devices))

    @property
    def state_sharding(self):
        """The train state: replicated over the mesh, or on the first CPU device when the host drives
        data parallelism."""
        if self.host_parallel:
            return jax.sharding.SingleDeviceSharding(self.devices[0])
        return self._replicated

    def put_state(self, state):
        return jax.device_put(state, self.state_sharding)

    def put_rows(self, rows: np.ndarray) -> jax.Array:
        """A bucket's padded row matrix, on every device (each gathers its own rows from it)."""
        return _put(rows, self._replicated)

    def put_idx(self, idx: np.ndarray, pad_row: int):
        """A batch's row positions, filled up with `pad_row` (an all-padding row, which adds nothing
        to the loss or the gradient) to a multiple of the device count, then placed: a host array for
        `HostParallelStep`, which splits it, else sharded over the mesh."""
        fill = (-len(idx)) % self.n_devices
        if fill:
            idx = np.concatenate([idx, np.full(fill, pad_row, idx.dtype)])
        return idx if self.host_parallel else _put(idx, self._batch)

    def train_step(self, cfg, tx):
        """step(state, data (N+1, L+1) int32, idx) -> (state, {"loss", "grad_norm"}), one compilation
        per bucket shape, the state donated."""
        if self.host_parallel:
            return HostParallelStep(cfg, tx, self.devices)
        return jax.jit(step_fn(cfg, tx), donate_argnums=(0,))

    def eval_step(self, cfg):
        """(params, data, idx) -> (sum of -log p, real tokens), without dropout."""
        ev = jax.jit(lambda params, data, idx: masked_nll(params, jnp.take(data, idx, axis=0), cfg))
        if not self.host_parallel:
            return ev
        devices = self.devices

        def run(params, data, idx):
            outs = [ev(jax.device_put(params, dev), rows, part) for dev, rows, part in _device_shares(devices, data, idx)]
            return tuple(sum(jax.device_put(o[i], devices[0]) for o in outs) for i in range(2))

        return run


def _device_shares(devices, data, idx):
    """[(device, its copy of the replicated bucket matrix, its slice of idx on it)]: idx is a host
    array whose length is a multiple of the devices (`Placement.put_idx`)."""
    shards = {s.device: s.data for s in data.addressable_shards}
    parts = np.split(np.asarray(idx), len(devices))
    return [(dev, shards[dev], jax.device_put(part, dev)) for dev, part in zip(devices, parts)]


class HostParallelStep:
    """Data parallelism over XLA:CPU devices without collectives.

    Per step: the parameters go to every device as one flat vector, each device computes the
    gradient sums of its share of the rows (its own copy of the bucket matrix, its slice of `idx`)
    as one flat vector, those come back to the first device, and one jitted update sums and applies
    them. Everything is dispatched asynchronously; nothing waits on the host, and flat vectors keep
    the host's work to a few transfers per step.

    A collective-free SPMD program (`shard_map` without the psum) compiles once for all devices but
    blocked the host at every dispatch, and ran an epoch at 1.6 M tokens/s against 2.0 M for this
    per-device dispatch, which compiles each bucket once per device (benchmarks/NOTES.md)."""

    def __init__(self, cfg, tx, devices):
        self.devices = list(devices)
        self.cfg = cfg
        self._unravel = None
        self._flat, self._flat_of = None, None
        local = local_grads(cfg)

        def grads(flat, data, idx, key):  # [nll, n, gradient...] of this device's rows
            nll, n, g = local(self._unravel(flat), jnp.take(data, idx, axis=0), key)
            return jnp.concatenate([jnp.stack([nll, n]), ravel_pytree(g)[0]])

        def update(state, outs):
            tot = sum(outs)
            new, metrics = apply_grads(tx, state, tot[0], tot[1], self._unravel(tot[2:]))
            return new, metrics, ravel_pytree(new["params"])[0]

        self.grads = jax.jit(grads)
        self.ravel = jax.jit(lambda params: ravel_pytree(params)[0])
        self.update = jax.jit(update, donate_argnums=(0,))

    def __call__(self, state, data, idx):
        params = state["params"]
        if self._unravel is None:
            self._unravel = ravel_pytree(params)[1]
        if self._flat_of is not jax.tree.leaves(params)[0]:  # a state this step did not produce
            self._flat = self.ravel(params)
        key = dropout_key(self.cfg, state["step"])
        outs = []
        for d, (dev, rows, part) in enumerate(_device_shares(self.devices, data, idx)):
            k = None if key is None else jax.device_put(jax.random.fold_in(key, d), dev)
            outs.append(self.grads(jax.device_put(self._flat, dev), rows, part, k))
        new, metrics, self._flat = self.update(state, [jax.device_put(o, self.devices[0]) for o in outs])
        self._flat_of = jax.tree.leaves(new["params"])[0]
        return new, metrics

    def compilations(self) -> int:
        """Compiled bucket shapes (each once per device)."""
        return self.grads._cache_size() // len(self.devices)
