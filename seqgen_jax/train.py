"""Training loops: the bucket loop here, the text-stream loop in stream.py, and what both share
(opening or resuming a run, the deadline, closing and recording an epoch).

Data path: Dataset -> rows with start/end markers -> bucket plan -> one padded device matrix per
bucket -> per step only a (batch,) index vector crosses to the device and the step gathers its
rows there. Metrics are fetched one step late (never `float(loss)` on the step just dispatched), and
the epoch statistics accumulate on the device inside the step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import jax

from ._devices import enable_compilation_cache
from .buckets import BucketedSplit, epoch_order
from .checkpoint import Checkpointer, abstract
from .config import RunConfig, validate
from .data import Dataset, build_dataset
from .data.base import LN2
from .errors import UserError
from .memory import check_model_memory
from .model import count_params
from .parallel import Placement, make_mesh
from .run import RunDir
from .step import HorizonFit, get_horizon, init_train_state, make_optimizer, make_schedule, set_horizon, zero_acc


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

        plot_run(run, cfg)
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
    ckpt = run.checkpointer(keep=cfg.train.keep, primary=primary)
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
            recs = run.epoch_records()
            out.finished = recs[-1] if recs else {}
            return out
    if primary and resume:  # a resumed run records its new length (--epochs) too
        run.write_config(cfg)
    elif primary:
        run.start(cfg, ds.vocab)
    return out


def start_fit(schedule, state: dict, deadline: float, log) -> tuple[HorizonFit, dict]:
    """The `cosine-time` fitter for this process, and the state with the horizon it starts from: a
    resumed run with a deadline continues from its saved horizon (the fit moves it from there); one
    without a deadline takes its planned steps, as `cosine` would."""
    fit = HorizonFit(schedule, deadline, processes=jax.process_count())
    saved = get_horizon(state)
    if saved is not None:
        schedule.horizon = saved if fit.active else float(max(schedule.total, schedule.warm + 1))
        if schedule.horizon != saved:
            state = set_horizon(state, schedule.horizon)
    if fit.active:
        log(f"schedule: cosine-time, fitted to the deadline (planned {schedule.total:,} steps)")
    return fit, state


def _train(cfg: RunConfig, run: RunDir, resume: bool, log, dataset, mesh, primary: bool) -> dict:
    if resume:
        cfg = run.resume_config(cfg)
        if not run.has_checkpoints():
            # Killed during its first epoch (Ctrl-C): nothing to restore, so it starts again at step 0.
            log(f"{run.path} has no checkpoint yet: starting it from step 0 with its saved settings")
            resume = False
    else:
        run.check_fresh()
    if primary:
        run.check_writable()
        lock = run.lock()  # held until this function returns (the file object lives in this frame)

    t_start = time.time()
    ds = dataset if dataset is not None else build_dataset(cfg.data)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=len(ds.vocab)))
    check_model_memory(cfg)  # before any parameter exists: an overcommitted allocation may not fail at once
    if ds.info.get("train_stream") is not None:
        from .stream import train_stream

        return train_stream(cfg, run, ds, resume=resume, log=log, primary=primary, t_start=t_start)
    place = Placement(mesh if mesh is not None else make_mesh(cfg.train.devices))
    train_split = BucketedSplit.build(ds.train, cfg.train.max_tokens, cfg.train.max_buckets, place, cfg.data.chunk)
    val_split = BucketedSplit.build(ds.val, cfg.train.max_tokens, cfg.train.max_buckets, place, cfg.data.chunk)
    plan = train_split.plan
    steps_per_epoch = plan.batches_per_epoch()
    total_steps = steps_per_epoch * cfg.train.epochs
    tx = make_optimizer(cfg, total_steps)
    schedule = make_schedule(cfg, total_steps)
    state = place.put_state(init_train_state(cfg, tx))
    log(f"{ds.spec}: {len(ds.train):,} train / {len(ds.val):,} val sequences, vocab {len(ds.vocab)}; "
        f"model {cfg.model.embed}/{cfg.model.hidden}x{cfg.model.layers} ({count_params(state['params']):,} params) "
        f"on {place.n_devices} {jax.default_backend()} device(s)")
    log(f"train: {plan.describe()}")

    opened = open_run(cfg, run, ds, state, resume, primary, log)
    if opened.finished is not None:
        return opened.finished
    ckpt, state, start_epoch, start_batch, best_val = (opened.ckpt, opened.state, opened.epoch, opened.batch,
                                                       opened.best_val)

    from .evaluate import EpochEvaluator

    evaluator = EpochEvaluator(cfg, ds, run if primary else None)
    step_fn = place.train_step(cfg, tx)
    eval_fn = place.eval_step(cfg)
    deadline = t_start + cfg.train.max_time if cfg.train.max_time else math.inf
    fit, state = start_fit(schedule, state, deadline, log)
    last = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        order = epoch_order(plan, cfg.train.seed, epoch)
        if epoch != start_epoch or start_batch == 0:
            state["acc"] = jax.device_put(zero_acc(), place.state_sharding)
        t_epoch, pending = time.time(), None
        tokens_since, t_log = 0, time.time()
        stopped = False
        for bi in range(start_batch if epoch == start_epoch else 0, len(order)):
            b, idx = order[bi]
            gstep = epoch * steps_per_epoch + bi + 1
            state, m = step_fn(state, *train_split.batch(b, idx))
            tokens_since += train_split.real_tokens(b, idx)  # per-step tokens/s counts no padding
            if pending is not None and primary:  # one step late: the previous step is done or nearly
                _flush_step_record(run, pending, schedule)
                pending = None
            if gstep % cfg.train.log_every == 0:
                now = time.time()
                pending = (gstep, m, tokens_since, now - t_log)
                tokens_since, t_log = 0, now
                if (h := fit.update(gstep, now)) is not None:
                    state = set_horizon(state, h)
            if time.time() > deadline and bi + 1 < len(order):
                stopped = save_at_deadline(ckpt, run, state, pending, schedule, primary, log, gstep=gstep,
                                           epoch=epoch, batch=bi + 1, best_val=best_val)
                break
        if stopped:
            break
        acc = close_epoch(run, pending, schedule, primary, state, ckpt, cfg, epoch,
                          f" (steps {epoch * steps_per_epoch + 1}–{(epoch + 1) * steps_per_epoch})")
        seconds = time.time() - t_epoch
        val_ce, _ = val_split.score(eval_fn, state["params"])
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
