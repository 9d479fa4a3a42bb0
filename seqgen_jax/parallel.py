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
from .step import StepSpec, apply_grads, block_fn, dropout_key, local_grads, masked_nll, step_fn


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
        self._carry = NamedSharding(self.mesh, P(None, "data"))
        self._block = NamedSharding(self.mesh, P(None, "data"))

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

    def put_state(self, state, members: int = 1):
        """The train state placed; a carried LSTM state ("carry", (L, B, H) pairs) is split over the
        mesh by rows, as the stream rows it continues. A sweep's stacked state (`members` > 1, member
        axis first) is split over the mesh by members."""
        if members > 1:
            return jax.device_put(state, self.member_sharding(members))
        rest = jax.device_put({k: v for k, v in state.items() if k != "carry"}, self.state_sharding)
        if "carry" in state:
            rest["carry"] = self.put_carry(state["carry"])
        return rest

    def member_sharding(self, members: int):
        """A sweep's member axis over the mesh when the members divide evenly (no member ever talks to
        another, so the program has no collectives), else everything on the first device."""
        if self.n_devices > 1 and members % self.n_devices == 0:
            return self._batch
        return jax.sharding.SingleDeviceSharding(self.devices[0])

    def put_carry(self, carry, members: int = 1):
        if members > 1:
            return tuple(_put(np.asarray(c), self.member_sharding(members)) for c in carry)
        return tuple(_put(np.asarray(c), self._carry) for c in carry)

    def put_rows(self, rows: np.ndarray) -> jax.Array:
        """A bucket's padded row matrix, on every device (each gathers its own rows from it)."""
        return _put(rows, self._replicated)

    def put_streams(self, mat: np.ndarray, members: bool = False) -> jax.Array:
        """A (B, cols) stream matrix, its rows split over the mesh (B is a multiple of the devices); a
        sweep's (M, B, cols) member matrices split by members."""
        mat = np.ascontiguousarray(mat)
        return _put(mat, self.member_sharding(mat.shape[0]) if members else self._batch)

    def pad_idx(self, idx: np.ndarray, pad_row: int) -> np.ndarray:
        """Row positions filled up with `pad_row` (an all-padding row, which adds nothing to the loss or
        the gradient) to a multiple of the device count (the last axis)."""
        fill = (-idx.shape[-1]) % self.n_devices
        if fill:
            idx = np.concatenate([idx, np.full(idx.shape[:-1] + (fill,), pad_row, idx.dtype)], axis=-1)
        return idx

    def put_idx(self, idx: np.ndarray, pad_row: int):
        """One batch's row positions, filled up (`pad_idx`) and placed: a host array for
        `HostParallelStep`, which splits it, else sharded over the mesh."""
        idx = self.pad_idx(idx, pad_row)
        return idx if self.host_parallel else _put(idx, self._batch)

    def put_block(self, xs: np.ndarray, live: np.ndarray, members: bool = False):
        """A block's per-step inputs (M, K, ...) and live flags (M, K), member axis first. One run
        (`members` False): (K, ...) bucket indices sharded over the mesh by rows, window starts
        replicated (host arrays for the host-driven steps). A sweep: split over the mesh by members."""
        if members:
            sh = self.member_sharding(xs.shape[0])
            return _put(np.ascontiguousarray(xs), sh), _put(np.ascontiguousarray(live), sh)
        xs, live = np.ascontiguousarray(xs[0]), np.ascontiguousarray(live[0])
        if self.host_parallel:
            return xs, live
        xs_s = self._block if xs.ndim == 2 else self._replicated
        return _put(xs, xs_s), _put(live, self._replicated)

    def train_step(self, cfg, tx, spec: StepSpec = StepSpec()):
        """step(state, data, x) -> (state, {"loss", "grad_norm"}), one compilation per shape, the state
        donated (see `step.step_fn` for data and x)."""
        if self.host_parallel:
            return HostParallelStep(cfg, tx, self.devices, spec, self)
        return jax.jit(step_fn(cfg, tx, spec), donate_argnums=(0,))

    def block_runner(self, cfg, tx, spec: StepSpec = StepSpec(), members: int = 1, data_per_member: bool = False):
        """K steps per call: run(state, data, xs, live) -> (state, metrics of (K,)); `compile(...)`
        builds every shape ahead of the first step. A sweep (`members` > 1): the block vmapped over
        the member axis of the state, the inputs and (`data_per_member`) the data; metrics (M, K)."""
        if members > 1:
            fn = jax.vmap(block_fn(cfg, tx, spec, freeze_nonfinite=True),
                          in_axes=(0, 0 if data_per_member else None, 0, 0))
            return JitBlockRunner(jax.jit(fn, donate_argnums=(0,)))
        if self.host_parallel:
            return HostBlockRunner(HostParallelStep(cfg, tx, self.devices, spec, self))
        return JitBlockRunner(jax.jit(block_fn(cfg, tx, spec), donate_argnums=(0,)))

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


def _compile_all(jobs) -> float:
    """Compile every (lower-able) job on threads, several at once; returns the wall seconds. XLA
    compiles outside the GIL, so two cores compile two shapes at a time."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    if jobs:
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda job: job(), jobs))
    return time.perf_counter() - t


class JitBlockRunner:
    """One jitted program per block shape (SPMD over the mesh, or one device)."""

    def __init__(self, jitted):
        self.jitted = jitted
        self.warm: set = set()

    @staticmethod
    def _key(*args):
        return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args))

    def compile(self, examples) -> float:
        """examples: [(state, data, xs, live)] placed as the loop will pass them. Each shape is compiled
        by one call on a copy of the state with every step dead (nothing runs), which fills jit's own
        cache: an ahead-of-time executable would cost ~1 ms more per call (benchmarks/NOTES.md)."""
        jobs = []
        for state, data, xs, live in examples:
            key = self._key(data, xs, live)
            if key in self.warm:
                continue
            self.warm.add(key)

            def job(state=state, data=data, xs=xs, live=live):
                copy = jax.tree.map(lambda a: a.copy(), state)
                dead = jax.tree.map(lambda a: a.copy(), live)
                jax.block_until_ready(self.jitted(copy, data, xs, dead))

            jobs.append(job)
        return _compile_all(jobs)

    def __call__(self, state, data, xs, live):
        return self.jitted(state, data, xs, live)


class HostBlockRunner:
    """The host-driven steps of a block, dispatched one after another (nothing waits on the host)."""

    def __init__(self, step: "HostParallelStep"):
        self.step = step

    def compile(self, examples) -> float:
        jobs = []
        for state, data, xs, live in examples:
            jobs += self.step.compile_jobs(state, data, xs[0])
        return _compile_all(jobs)

    def __call__(self, state, data, xs, live):
        """Metrics come back as lists of per-step device scalars (0.0 for dead steps): stacking them on
        the device cost a synchronous dispatch per block, half an epoch's time at (32, 16)."""
        losses, norms = [], []
        for k in range(len(live)):
            if live[k]:
                state, m = self.step(state, data, xs[k])
                losses.append(m["loss"])
                norms.append(m["grad_norm"])
            else:
                losses.append(0.0)
                norms.append(0.0)
        return state, {"loss": losses, "grad_norm": norms}


def _device_shares(devices, data, idx):
    """[(device, its copy of the replicated bucket matrix, its slice of idx on it)]: idx is a host
    array whose length is a multiple of the devices (`Placement.put_idx`)."""
    shards = {s.device: s.data for s in data.addressable_shards}
    parts = np.split(np.asarray(idx), len(devices))
    return [(dev, shards[dev], jax.device_put(part, dev)) for dev, part in zip(devices, parts)]


def _row_shards(devices, arr, axis: int = 0):
    """Each device's piece of an array split over the mesh by rows (`axis`), in device order."""
    shards = {s.device: s for s in arr.addressable_shards}
    return [shards[d].data for d in devices]


class HostParallelStep:
    """Data parallelism over XLA:CPU devices without collectives.

    Per step: the parameters go to every device as one flat vector, each device computes the
    gradient sums of its share of the rows (a bucket step: its own copy of the bucket matrix and its
    slice of `idx`; a window step: its rows of the stream matrix and of the carried state) as one flat
    vector, those come back to the first device, and one jitted update sums and applies them.
    Everything is dispatched asynchronously; nothing waits on the host, and flat vectors keep the
    host's work to a few transfers per step.

    A collective-free SPMD program (`shard_map` without the psum) compiles once for all devices but
    blocked the host at every dispatch, and ran an epoch at 1.6 M tokens/s against 2.0 M for this
    per-device dispatch, which compiles each shape once per device (benchmarks/NOTES.md)."""

    def __init__(self, cfg, tx, devices, spec: StepSpec = StepSpec(), placement: "Placement | None" = None):
        self.devices = list(devices)
        self.cfg, self.spec = cfg, spec
        self.placement = placement
        self._unravel = None
        self._flat, self._flat_of = None, None
        local = local_grads(cfg, spec)

        def grads(flat, data, x, carry, key):  # [nll, n, gradient...] of this device's rows
            nll, n, g, new_carry = local(self._unravel(flat), data, x, carry, key)
            return jnp.concatenate([jnp.stack([nll, n]), ravel_pytree(g)[0]]), new_carry

        def update(state, outs):
            tot = sum(outs)
            new, metrics = apply_grads(tx, state, tot[0], tot[1], self._unravel(tot[2:]))
            return new, metrics, ravel_pytree(new["params"])[0]

        self.grads = jax.jit(grads)
        self.ravel = jax.jit(lambda params: ravel_pytree(params)[0])
        self.update = jax.jit(update, donate_argnums=(0,))
        self._warm: set = set()  # (device index, shapes) compiled ahead

    @staticmethod
    def _shape_key(d, piece, part, carry):
        return (d,) + tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves((piece, part, carry)))

    def _shares(self, data, x, carry):
        """[(device, data piece, x piece, carry piece)] for one step."""
        devs = self.devices
        if self.spec.window is None:
            return [(dev, rows, part, None) for dev, rows, part in _device_shares(devs, data, x)]
        pieces = _row_shards(devs, data)
        if carry is not None and self.spec.carry:
            hs, cs = _row_shards(devs, carry[0]), _row_shards(devs, carry[1])
            carries = list(zip(hs, cs))
        else:
            carries = [None] * len(devs)
        start = np.int32(x)
        return [(dev, p, jax.device_put(start, dev), c) for dev, p, c in zip(devs, pieces, carries)]

    def _ensure_unravel(self, params):
        if self._unravel is None:
            self._unravel = ravel_pytree(params)[1]

    def compile_jobs(self, state, data, x):
        """Compilations of this step's shapes on every device, ahead of the first step (jobs to run
        on threads): one call each on zeros, which fills jit's own cache. Ahead-of-time executables
        (`lower().compile()`) would do it too, but calling one costs about 1 ms more than jit's C++
        path, twice a step here (benchmarks/NOTES.md, attempt 32)."""
        self._ensure_unravel(state["params"])
        n_flat = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(state["params"]))
        jobs = []
        for d, (dev, piece, part, carry) in enumerate(self._shares(data, x, state.get("carry"))):
            key_ = self._shape_key(d, piece, part, carry)
            if key_ in self._warm:
                continue
            self._warm.add(key_)
            key = dropout_key(self.cfg, jnp.int32(0))

            def job(dev=dev, piece=piece, part=part, carry=carry, key=key):
                flat = jax.device_put(jnp.zeros((n_flat,), jnp.float32), dev)
                jax.block_until_ready(self.grads(flat, piece, part, carry,
                                                 None if key is None else jax.device_put(key, dev)))

            jobs.append(job)
        return jobs

    def __call__(self, state, data, x):
        params = state["params"]
        self._ensure_unravel(params)
        if self._flat_of is not jax.tree.leaves(params)[0]:  # a state this step did not produce
            self._flat = self.ravel(params)
        key = dropout_key(self.cfg, state["step"], state.get("seed"))
        outs, carries = [], []
        for d, (dev, piece, part, carry) in enumerate(self._shares(data, x, state.get("carry"))):
            k = None if key is None else jax.device_put(jax.random.fold_in(key, d), dev)
            vec, new_carry = self.grads(jax.device_put(self._flat, dev), piece, part, carry, k)
            outs.append(jax.device_put(vec, self.devices[0]))
            carries.append(new_carry)
        core = {k: v for k, v in state.items() if k != "carry"}
        new, metrics, self._flat = self.update(core, outs)
        self._flat_of = jax.tree.leaves(new["params"])[0]
        if "carry" in state:
            new["carry"] = self._join_carry(state["carry"], carries) if self.spec.carry else state["carry"]
        return new, metrics

    def _join_carry(self, old, pieces):
        """The devices' new (h, c) pieces as global arrays split over the mesh like the old ones."""
        return tuple(jax.make_array_from_single_device_arrays(o.shape, o.sharding, [p[i] for p in pieces])
                     for i, o in enumerate(old))

    def compilations(self) -> int:
        """Compiled shapes (each once per device), ahead of time or on first use."""
        return self.grads._cache_size() // len(self.devices)
