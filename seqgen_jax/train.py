"""Training: one jitted, donated step per bucket shape; the epoch loop; run directories.

Data path: Dataset -> rows with start/end markers -> bucket plan -> one padded device matrix per
bucket -> per step only a (batch,) index vector crosses to the device and the step gathers its
rows there. Metrics are fetched one step late (never `float(loss)` on the step just dispatched), and
the epoch statistics accumulate on the device inside the step.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from . import sharding as shd
from .buckets import BucketPlan, epoch_order, fixed_order, make_rows, pad_rows, plan_buckets
from .checkpoint import Checkpointer, abstract
from .data.base import LN2
from .config import RunConfig, validate
from .data import Dataset, build_dataset
from .data.vocab import Ragged
from .errors import UserError
from .model import count_params, init_params, token_logprobs



def enable_compilation_cache() -> None:
    """Persistent XLA cache: a second run of the same shapes skips compilation."""
    path = os.environ.get("SEQGEN_JAX_CACHE", str(Path.home() / ".cache" / "seqgen_jax" / "xla"))
    try:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception:  # an older/newer JAX without these options still trains
        pass


# ---------------------------------------------------------------- optimiser and step
def make_schedule(cfg: RunConfig, total_steps: int) -> Callable:
    t = cfg.train
    if t.schedule == "constant":
        return optax.constant_schedule(t.lr)
    warm = min(t.warmup_steps, max(total_steps // 10, 1))
    return optax.warmup_cosine_decay_schedule(0.0, t.lr, warm, max(total_steps, warm + 1), end_value=t.lr * 0.02)


def make_optimizer(cfg: RunConfig, total_steps: int) -> optax.GradientTransformation:
    """The course's optimiser: clip the global norm (5), then Adam, with a schedule so the final model
    (not only the best one) is good."""
    return optax.chain(optax.clip_by_global_norm(cfg.train.clip), optax.adam(make_schedule(cfg, total_steps)))


def _zero_acc():
    # Distinct buffers: the state is donated, and one buffer cannot be donated twice.
    return {k: jnp.zeros((), jnp.float32) for k in ("nll", "tokens", "gn_sum", "gn_sq", "gn_max", "steps")}


def init_train_state(cfg: RunConfig, tx: optax.GradientTransformation) -> dict:
    params = init_params(cfg.model, cfg.train.seed)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "acc": _zero_acc()}


def masked_nll(params, rows, cfg, dropout_key=None):
    """(sum of -log p over real target tokens, their number): padding never enters the loss."""
    lp, _ = token_logprobs(params, rows, cfg=cfg.model, dropout_key=dropout_key)
    return -lp.sum(), (rows[:, 1:] != 0).sum().astype(jnp.float32)


# optax renamed global_norm to tree.norm; keep both versions (CPU 0.2.8 here, GPU images differ) quiet.
_global_norm = optax.tree.norm if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm


def _local_grads(cfg: RunConfig):
    """(params, rows, key) -> (sum of -log p, real tokens, gradient of the sum) for one device's rows."""

    def fn(params, rows, key):
        (nll, n), grads = jax.value_and_grad(lambda p: masked_nll(p, rows, cfg, key), has_aux=True)(params)
        return nll, n, grads

    return fn


def _apply_grads(tx, state, nll, n, grads):
    """Mean gradient -> clip + Adam, and the epoch statistics accumulated on the device."""
    grads = jax.tree.map(lambda g: g / jnp.maximum(n, 1.0), grads)  # of the mean over real tokens
    loss = nll / jnp.maximum(n, 1.0)
    gn = _global_norm(grads)  # before clipping, as the course plots it
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    a = state["acc"]
    acc = {"nll": a["nll"] + nll, "tokens": a["tokens"] + n, "gn_sum": a["gn_sum"] + gn,
           "gn_sq": a["gn_sq"] + gn * gn, "gn_max": jnp.maximum(a["gn_max"], gn), "steps": a["steps"] + 1}
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "acc": acc}
    return new, {"loss": loss, "grad_norm": gn}


def _dropout_key(cfg: RunConfig, step):
    return jax.random.fold_in(jax.random.key(cfg.train.seed), step) if cfg.model.dropout > 0 else None


def host_parallel(mesh) -> bool:
    """CPU meshes of several devices (one per core, `_devices.py`) run data parallel from the host.

    In-graph collectives between XLA:CPU devices share one small thread pool, and a psum in the step
    deadlocked there (rendezvous timeout) in an epoch of mixed bucket shapes; the host path has no
    collectives at all (benchmarks/NOTES.md)."""
    return (mesh.devices.size > 1 and jax.process_count() == 1
            and all(d.platform == "cpu" for d in mesh.devices.flat))


def state_sharding(mesh):
    """Where the train state lives: replicated over the mesh, or on the first CPU device when the
    host drives data parallelism."""
    if host_parallel(mesh):
        return jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
    return shd.replicated(mesh)


def _device_shares(devices, data, idx):
    """[(device, its copy of the replicated bucket matrix, its slice of idx on it)]: idx is a host
    array whose length is a multiple of the devices (`BucketedSplit.device_idx`)."""
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

    Why not the usual SPMD step with an all-reduce: in-graph collectives between XLA:CPU devices
    share one small thread pool, and a psum in the step deadlocked there (rendezvous timeout) in an
    epoch of mixed bucket shapes. A collective-free SPMD program (`shard_map` without the psum)
    compiles once for all devices but blocked the host at every dispatch, and ran an epoch at
    1.6 M tokens/s against 2.0 M for this per-device dispatch, which compiles each bucket once per
    device (benchmarks/NOTES.md)."""

    def __init__(self, cfg: RunConfig, tx, mesh):
        self.devices = list(mesh.devices.flat)
        self.cfg = cfg
        self._unravel = None
        self._flat, self._flat_of = None, None
        local = _local_grads(cfg)

        def grads(flat, data, idx, key):  # [nll, n, gradient...] of this device's rows
            nll, n, g = local(self._unravel(flat), jnp.take(data, idx, axis=0), key)
            return jnp.concatenate([jnp.stack([nll, n]), ravel_pytree(g)[0]])

        def update(state, outs):
            tot = sum(outs)
            new, metrics = _apply_grads(tx, state, tot[0], tot[1], self._unravel(tot[2:]))
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
        key = _dropout_key(self.cfg, state["step"])
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


def make_train_step(cfg: RunConfig, tx: optax.GradientTransformation, mesh=None):
    """step(state, data (N+1, L+1) int32, idx (B,) int32) -> (state, {"loss", "grad_norm"}).

    One compilation per bucket shape; state buffers are donated. On several devices `idx` is a
    multiple of the device count (`BucketedSplit.device_idx`): a host array on CPU meshes
    (`HostParallelStep`), else sharded over the mesh, where XLA inserts the gradient all-reduce."""
    mesh = mesh if mesh is not None else shd.make_mesh(1)
    if host_parallel(mesh):
        return HostParallelStep(cfg, tx, mesh)
    return jax.jit(step_fn(cfg, tx), donate_argnums=(0,))


def step_fn(cfg: RunConfig, tx: optax.GradientTransformation):
    """The un-jitted single-program step (state, data, idx) -> (state, metrics); `make_train_step` jits
    it with donation and the mesh's shardings, benchmarks jit it bare to price the sharding."""
    local = _local_grads(cfg)

    def step(state, data, idx):
        nll, n, grads = local(state["params"], jnp.take(data, idx, axis=0), _dropout_key(cfg, state["step"]))
        return _apply_grads(tx, state, nll, n, grads)

    return step


def make_eval_step(cfg: RunConfig, mesh=None):
    """(params, data, idx) -> (sum nll, n tokens) without dropout."""
    mesh = mesh if mesh is not None else shd.make_mesh(1)
    ev = jax.jit(lambda params, data, idx: masked_nll(params, jnp.take(data, idx, axis=0), cfg))
    if not host_parallel(mesh):
        return ev
    devices = list(mesh.devices.flat)

    def run(params, data, idx):
        outs = [ev(jax.device_put(params, dev), rows, part) for dev, rows, part in _device_shares(devices, data, idx)]
        return tuple(sum(jax.device_put(o[i], devices[0]) for o in outs) for i in range(2))

    return run


# ---------------------------------------------------------------- device-resident buckets
@dataclass
class BucketedSplit:
    plan: BucketPlan
    data: list  # per bucket: device array (n_b + 1, L + 1) int32, last row all padding
    n_tokens: int
    n_devices: int = 1

    @classmethod
    def build(cls, seqs: Ragged, max_tokens: int, max_buckets: int, mesh, chunk=None, cap_batch=True):
        """The plan does not depend on the device count, so a run's batches are the same on any
        machine; `device_idx` fills each batch up to a multiple of the devices with padding rows."""
        rows = make_rows(seqs, chunk)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = plan_buckets(rows.lengths - 1, max_tokens, max_buckets, cap_batch=cap_batch)
        for w in caught[:1]:
            print(f"warning: {w.message}", file=sys.stderr)
        rep = shd.replicated(mesh)
        data = [shd.put(pad_rows(rows, plan.members(b), bk.length + 1), rep) for b, bk in enumerate(plan.buckets)]
        return cls(plan, data, int((rows.lengths - 1).sum()), int(mesh.devices.size))

    def device_idx(self, b: int, idx: np.ndarray) -> np.ndarray:
        """Row positions of one batch, filled up with the all-padding row (position n_b) to a multiple
        of the device count: padding rows add nothing to the loss or the gradient."""
        fill = (-len(idx)) % self.n_devices
        if fill == 0:
            return idx
        return np.concatenate([idx, np.full(fill, self.data[b].shape[0] - 1, idx.dtype)])


def idx_placer(mesh):
    if host_parallel(mesh):
        return lambda idx: idx  # HostParallelStep splits and places it
    bs = shd.batch_sharded(mesh)
    return lambda idx: shd.put(idx, bs)


def evaluate_ce(eval_step, params, split: BucketedSplit, mesh) -> tuple[float, float]:
    """(cross-entropy in bits per token, number of tokens) over a whole split."""
    put = idx_placer(mesh)
    tot = 0.0, 0.0
    for b, idx in fixed_order(split.plan):
        nll, n = eval_step(params, split.data[b], put(split.device_idx(b, idx)))
        tot = (tot[0] + nll, tot[1] + n)
    nll, n = float(tot[0]), float(tot[1])
    return nll / max(n, 1.0) / LN2, n


# ---------------------------------------------------------------- run directory
class RunDir:
    """config.json, vocab.json, metrics.jsonl, checkpoints/, best/, plots, samples/."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def config_path(self):
        return self.path / "config.json"

    def exists(self) -> bool:
        return self.config_path.exists()

    def load_config(self) -> RunConfig:
        if not self.path.is_dir() or not self.config_path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.json); train one with "
                            f"seqgen train NAME --run-dir {self.path}")
        try:
            return RunConfig.from_json(json.loads(self.config_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.config_path} is not valid UTF-8 JSON ({type(e).__name__}); the run directory "
                            "is damaged") from None

    def read_metrics(self) -> list[dict]:
        out = []
        p = self.path / "metrics.jsonl"
        if p.exists():
            for line in p.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a killed process
        return out

    def truncate_metrics(self, step: int, epoch_done: int) -> None:
        """Drop records written after the checkpoint we resume from (and any torn last line)."""
        keep = [m for m in self.read_metrics()
                if ("epoch" in m and m["epoch"] <= epoch_done) or ("epoch" not in m and m.get("step", 0) <= step)]
        from .io import atomic_write_text

        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in keep))

    def append_metrics(self, *records: dict) -> None:
        from .io import json_safe

        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(json_safe(r), allow_nan=False) + "\n")

    def has_checkpoints(self) -> bool:
        d = self.path / "checkpoints"
        return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())

    def lock(self):
        """An exclusive lock on the run directory for the life of the returned file: a second process
        training into the same run gets one line instead of interleaved metrics or orbax races."""
        import fcntl

        f = open(self.path / ".lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise UserError(f"{self.path} is in use by another seqgen process; wait for it to finish "
                            "or choose another --run-dir") from None
        return f


# What a run directory may hold before it is a run: nothing of the user's is ever overwritten.
RUN_FILES = {"config.json", "vocab.json", "metrics.jsonl", ".lock", ".write-test"}


def check_fresh(path: Path) -> None:
    """A new run goes into a missing or empty directory only (or one a killed first try left)."""
    if path.is_file():
        raise UserError(f"--run-dir {path} is a file; choose a directory")
    if path.is_dir():
        other = [p.name for p in path.iterdir() if p.name not in RUN_FILES]
        if other:
            raise UserError(f"--run-dir {path} is not empty and not a run (it holds {', '.join(sorted(other)[:3])}"
                            f"{', ...' if len(other) > 3 else ''}); choose a new or empty directory")


def check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write the run directory {path}: {e.strerror or e}; choose another --run-dir") from None


def check_model_memory(cfg: RunConfig) -> None:
    from .memory import check_fits

    m = cfg.model
    n_params = m.vocab_size * m.embed + 4 * m.hidden * (m.embed + m.hidden + 1) + \
        (m.layers - 1) * 4 * m.hidden * (2 * m.hidden + 1) + m.hidden * m.vocab_size
    # params, gradients and Adam's two moments, plus the activations of one full batch (gates, h, c)
    need = 4 * 4 * n_params + 4 * cfg.train.max_tokens * (6 * m.hidden * m.layers + 2 * m.vocab_size)
    check_fits(need, f"a ({m.embed}, {m.hidden}) x {m.layers} model with {cfg.train.max_tokens:,}-token batches",
               "lower --hidden, --embed, --layers or --max-tokens")


def _fmt_time(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m"


# ---------------------------------------------------------------- the loop
def _flush_step_record(run: RunDir, pending, schedule) -> None:
    """Write a logged step's record (the device values are fetched here, a step after dispatch)."""
    pstep, pm, ptoks, pt = pending
    run.append_metrics({"step": pstep, "loss": float(pm["loss"]), "grad_norm": float(pm["grad_norm"]),
                        "lr": float(schedule(pstep - 1)), "tokens_per_s": ptoks / max(pt, 1e-9)})


def save_at_deadline(ckpt, run: RunDir, state: dict, pending, schedule, primary: bool, log, *, gstep: int,
                     epoch: int, batch: int, best_val: float) -> bool:
    """--max-time reached mid-epoch: checkpoint where the loop stands (the one place both loops do it)."""
    if not math.isfinite(float(jax.device_get(state["acc"])["nll"])):
        ckpt.close()
        raise UserError(f"training diverged before step {gstep}: the loss is not finite; lower --lr")
    if pending is not None and primary:
        _flush_step_record(run, pending, schedule)
    ckpt.save(gstep, state["params"], {k: v for k, v in state.items() if k != "params"},
              {"epoch": epoch, "batch": batch, "best_val": best_val})
    log(f"--max-time reached at step {gstep}; checkpoint saved, continue with --resume")
    return True


def close_epoch(run: RunDir, pending, schedule, primary: bool, state: dict, ckpt, cfg: RunConfig, epoch: int,
                steps: str) -> dict:
    """The epoch's last step record and its statistics (the one host sync per epoch), refusing a
    diverged epoch."""
    if pending is not None and primary:
        _flush_step_record(run, pending, schedule)
    acc = jax.device_get(state["acc"])
    check_epoch_finite(acc, ckpt, cfg, epoch, steps)
    return acc


def record_epoch(run: RunDir, ckpt, cfg: RunConfig, state: dict, rec: dict, epoch: int, best_val: float,
                 primary: bool) -> float:
    """Append the epoch's record, checkpoint (into best/ too when val improved) and redraw the plots;
    returns the new best validation loss."""
    val = rec["val_ce_bits_per_token"]
    is_best = val < best_val
    best_val = min(best_val, val)
    if primary:
        run.append_metrics(rec)
    ckpt.save(rec["step"], state["params"], {k: v for k, v in state.items() if k != "params"},
              {"epoch": epoch + 1, "batch": 0, "best_val": best_val}, best=is_best)
    if primary:
        from .plots import plot_run

        plot_run(run.path, cfg)
    return best_val


def check_epoch_finite(acc: dict, ckpt, cfg: RunConfig, epoch: int, steps: str) -> None:
    """Diverged: the last checkpoint (the previous epoch's) stays the latest, nothing NaN is saved."""
    if not (math.isfinite(float(acc["nll"])) and math.isfinite(float(acc["gn_max"]))):
        ckpt.wait()
        ckpt.close()
        raise UserError(f"training diverged in epoch {epoch + 1}{steps}: the loss or gradient is not finite; lower "
                        f"--lr (now {cfg.train.lr:g}) and train into a new --run-dir, or --resume from the last "
                        "finite checkpoint with a lower --lr in a copy")


def train(cfg: RunConfig, run_dir, *, resume: bool = False, log: Callable[[str], None] = print,
          dataset: Dataset | None = None, mesh=None) -> dict:
    """Train per `cfg` into `run_dir`; returns the last epoch record. With `resume`, continue from
    the last checkpoint and end with the same metrics as an uninterrupted run."""
    validate(cfg)
    enable_compilation_cache()
    run = RunDir(run_dir)
    primary = jax.process_index() == 0
    created = not run.path.exists()
    try:
        return _train(cfg, run, resume, log, dataset, mesh, primary)
    except OSError as e:
        from .checkpoint import is_disk_full, settle

        if not is_disk_full(e):
            raise
        settle(run.path)  # no half-written checkpoint or plot is left for --resume to trip on
        raise UserError(f"the disk is full ({e.filename or run.path}); the last complete checkpoint is kept: "
                        "free space, then continue with --resume") from None
    except BaseException:
        # A run rejected before it wrote anything leaves no empty directory behind.
        if created and primary and run.path.is_dir() and not run.exists():
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)
        raise


@dataclass
class Opened:
    """A run ready for its loop: the checkpointer, the state to continue from and where."""

    ckpt: Checkpointer
    state: dict
    epoch: int = 0
    batch: int = 0
    best_val: float = math.inf
    finished: dict | None = None  # the last epoch record when there is nothing left to do


def open_run(cfg: RunConfig, run: RunDir, ds: Dataset, state: dict, resume: bool, primary: bool, log) -> Opened:
    """Restore the latest checkpoint (resume) or write a new run's files; the one place both loops
    (buckets and streams) start from."""
    ckpt = Checkpointer(run.path, keep=cfg.train.keep, primary=primary)
    out = Opened(ckpt, state)
    if resume:
        train_like = {k: v for k, v in state.items() if k != "params"}
        step0, params, rest, meta = ckpt.restore("latest", abstract(state["params"]), abstract(train_like))
        out.state = {"params": params, **rest}
        out.epoch, out.batch, out.best_val = meta["epoch"], meta["batch"], meta.get("best_val", math.inf)
        if primary:
            run.truncate_metrics(step0, out.epoch)
        log(f"resumed from step {step0} (epoch {out.epoch + 1}, batch {out.batch})")
        if out.epoch >= cfg.train.epochs:
            log("nothing to do: the run has finished all its epochs")
            ckpt.close()
            recs = [m for m in run.read_metrics() if "epoch" in m]
            out.finished = recs[-1] if recs else {}
            return out
    if primary:  # a resumed run records its new length (--epochs) too
        from .io import atomic_write_text

        atomic_write_text(run.config_path, cfg.dumps())
    if primary and not resume:
        ds.vocab.save(run.path / "vocab.json")
        (run.path / "metrics.jsonl").write_text("")
    return out


def _train(cfg: RunConfig, run: RunDir, resume: bool, log, dataset, mesh, primary: bool) -> dict:
    if resume:
        if not run.exists():
            raise UserError(f"--resume: {run.path} is not a run directory; start it without --resume")
        saved = run.load_config()
        if saved.model != replace(cfg.model, vocab_size=saved.model.vocab_size) or \
                replace(saved.data, imdb=None) != replace(cfg.data, imdb=None):
            raise UserError(f"--resume: the model or data settings differ from {run.config_path}; "
                            "resume with the saved settings or train into a new --run-dir")
        # Only the run's length and where the IMDb archive now is may change on resume.
        imdb = cfg.data.imdb or saved.data.imdb
        if imdb and not Path(imdb).exists() and os.environ.get("SEQGEN_IMDB"):
            imdb = None  # the archive moved: $SEQGEN_IMDB says where
        cfg = replace(saved, data=replace(saved.data, imdb=imdb),
                      train=replace(saved.train, epochs=cfg.train.epochs, max_time=cfg.train.max_time))
        if not run.has_checkpoints():
            # Killed during its first epoch (Ctrl-C): nothing to restore, so it starts again at step 0.
            log(f"{run.path} has no checkpoint yet: starting it from step 0 with its saved settings")
            resume = False
    elif run.exists() or run.has_checkpoints():
        raise UserError(f"{run.path} already holds a run; pass --resume to continue it or choose a new --run-dir")
    else:
        check_fresh(run.path)
    if primary:
        check_writable(run.path)
        lock = run.lock()  # held until this function returns (the file object lives in this frame)

    t_start = time.time()
    ds = dataset if dataset is not None else build_dataset(cfg.data)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=len(ds.vocab)))
    check_model_memory(cfg)  # before any parameter exists: an overcommitted allocation may not fail at once
    if ds.info.get("stream") is not None:
        from .stream import train_stream

        return train_stream(cfg, run, ds, resume=resume, log=log, primary=primary, t_start=t_start)
    mesh = mesh if mesh is not None else shd.make_mesh(cfg.train.devices)
    train_split = BucketedSplit.build(ds.train, cfg.train.max_tokens, cfg.train.max_buckets, mesh, cfg.data.chunk)
    val_split = BucketedSplit.build(ds.val, cfg.train.max_tokens, cfg.train.max_buckets, mesh, cfg.data.chunk)
    plan = train_split.plan
    steps_per_epoch = plan.batches_per_epoch()
    total_steps = steps_per_epoch * cfg.train.epochs
    tx = make_optimizer(cfg, total_steps)
    schedule = make_schedule(cfg, total_steps)
    rep, put_idx = state_sharding(mesh), idx_placer(mesh)
    state = jax.device_put(init_train_state(cfg, tx), rep)
    log(f"{ds.spec}: {len(ds.train):,} train / {len(ds.val):,} val sequences, vocab {len(ds.vocab)}; "
        f"model {cfg.model.embed}/{cfg.model.hidden}x{cfg.model.layers} ({count_params(state['params']):,} params) "
        f"on {mesh.devices.size} {jax.default_backend()} device(s)")
    log(f"train: {plan.describe()}")

    opened = open_run(cfg, run, ds, state, resume, primary, log)
    if opened.finished is not None:
        return opened.finished
    ckpt, state, start_epoch, start_batch, best_val = (opened.ckpt, opened.state, opened.epoch, opened.batch,
                                                       opened.best_val)

    from .evaluate import EpochEvaluator

    evaluator = EpochEvaluator(cfg, ds, run.path if primary else None)
    step_fn = make_train_step(cfg, tx, mesh)
    eval_fn = make_eval_step(cfg, mesh)
    deadline = t_start + cfg.train.max_time if cfg.train.max_time else math.inf
    last = {}
    real_tokens = [plan.lengths[plan.members(b)] for b in range(len(plan.buckets))]
    for epoch in range(start_epoch, cfg.train.epochs):
        order = epoch_order(plan, cfg.train.seed, epoch)
        if epoch != start_epoch or start_batch == 0:
            state["acc"] = jax.device_put(_zero_acc(), rep)
        t_epoch, pending = time.time(), None
        tokens_since, t_log = 0, time.time()
        stopped = False
        for bi in range(start_batch if epoch == start_epoch else 0, len(order)):
            b, idx = order[bi]
            gstep = epoch * steps_per_epoch + bi + 1
            state, m = step_fn(state, train_split.data[b], put_idx(train_split.device_idx(b, idx)))
            rt = real_tokens[b]
            tokens_since += int(rt[idx[idx < len(rt)]].sum())  # per-step tokens/s counts no padding
            if pending is not None and primary:  # one step late: the previous step is done or nearly
                _flush_step_record(run, pending, schedule)
                pending = None
            if gstep % cfg.train.log_every == 0:
                now = time.time()
                pending = (gstep, m, tokens_since, now - t_log)
                tokens_since, t_log = 0, now
            if time.time() > deadline and bi + 1 < len(order):
                stopped = save_at_deadline(ckpt, run, state, pending, schedule, primary, log, gstep=gstep,
                                           epoch=epoch, batch=bi + 1, best_val=best_val)
                break
        if stopped:
            break
        acc = close_epoch(run, pending, schedule, primary, state, ckpt, cfg, epoch,
                          f" (steps {epoch * steps_per_epoch + 1}–{(epoch + 1) * steps_per_epoch})")
        seconds = time.time() - t_epoch
        val_ce, _ = evaluate_ce(eval_fn, state["params"], val_split, mesh)
        nsteps = max(float(acc["steps"]), 1.0)
        gstep = (epoch + 1) * steps_per_epoch
        rec = {"epoch": epoch + 1, "step": gstep, "train_loss": float(acc["nll"] / max(acc["tokens"], 1.0)),
               "train_ce_bits_per_token": float(acc["nll"] / max(acc["tokens"], 1.0) / LN2),
               "val_ce_bits_per_token": val_ce, "grad_norm_mean": float(acc["gn_sum"] / nsteps),
               "grad_norm_std": float(math.sqrt(max(acc["gn_sq"] / nsteps - (acc["gn_sum"] / nsteps) ** 2, 0.0))),
               "grad_norm_max": float(acc["gn_max"]), "lr": float(schedule(gstep - 1)), "seconds": seconds,
               "tokens_per_s": train_split.n_tokens / max(seconds, 1e-9), "elapsed": time.time() - t_start}
        rec.update(evaluator(state["params"], epoch + 1, val_ce))
        best_val = record_epoch(run, ckpt, cfg, state, rec, epoch, best_val, primary)
        left = (cfg.train.epochs - epoch - 1) * seconds
        extra = "".join(f"  {k} {rec[k]:.4f}" for k in ("kl_bits_per_token",) if k in rec)
        if "valid_rate_1.0" in rec:
            extra += f"  valid(T=0/1) {rec['valid_rate_0.0']:.3f}/{rec['valid_rate_1.0']:.3f}"
        log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {rec['train_ce_bits_per_token']:.4f}  "
            f"val {val_ce:.4f} bits/token{extra}  grad {rec['grad_norm_mean']:.3f}  "
            f"{rec['tokens_per_s'] / 1e6:.2f}M tok/s  {_fmt_time(seconds)}  left ~{_fmt_time(left)}")
        last = rec
        start_batch = 0
    ckpt.wait()
    ckpt.close()
    return last
