"""Training: the one epoch loop, for every feed.

    train(cfg, run_dir)  ->  the last epoch's record

Data path: Dataset -> feed (feeds.py: bucket, stream or packed; its matrices placed on the device by
parallel.Placement) -> blocks of K steps, each one device program (step.block_fn) -> run directory.
Per block only the block's indices or start columns cross to the device; its metrics come back one
block late (never a sync on the block just dispatched), and the epoch statistics accumulate on the
device inside the step, so an epoch costs one host sync. Every shape an epoch needs is compiled before
the first step, several at once, and the time is recorded (`compile_seconds`).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import jax
import numpy as np

from ._devices import enable_compilation_cache, host_memory_kept, prepare_for_step
from .checkpoint import Checkpointer, abstract
from .config import RunConfig, validate
from .data import Dataset, build_dataset, check_corpus, dataset_kind, default_run_name
from .data.base import LN2
from .errors import UserError
from .feeds import resolve_feed, steps_per_call
from .memory import check_model_memory
from .model import count_params
from .parallel import Placement, make_mesh
from .run import RunDir
from .step import FittedCosine, HorizonFit, get_horizon, init_train_state, make_optimizer, make_schedule, set_horizon, zero_acc

PROGRESS_SECONDS = 10.0  # a progress line at most this often


def _fmt_time(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m"


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / default_run_name(cfg.data.name)


# ---------------------------------------------------------------- entry point
def train(cfg: RunConfig, run_dir=None, *, resume: bool = False, log: Callable[[str], None] = print,
          dataset: Dataset | None = None, mesh=None, given: Iterable[str] | None = None,
          name_of: Callable[[str], str] = str) -> dict:
    """Train per `cfg` into `run_dir` (default runs/<dataset>); returns the last epoch record. With
    `resume`, continue from the last checkpoint under the saved settings (only the run's length and
    the IMDb archive's location may change; `given` names the settings a user typed, `name_of` how to
    name them in a refusal) and end with the same metrics as an uninterrupted run."""
    if run_dir is None:
        run_dir = default_run_dir(cfg)
    if str(run_dir).strip() == "":
        raise UserError("--run-dir is empty (an unset shell variable?); give a directory, e.g. --run-dir runs/demo")
    run = RunDir(run_dir)
    if resume:
        cfg = run.resume_config(cfg, given, name_of)
    validate(cfg)
    devices = None if cfg.train.devices == "all" else int(cfg.train.devices)
    prepare_for_step(cfg.model.hidden, cfg.model.layers, cfg.train.max_tokens, devices)  # before the backend starts
    enable_compilation_cache()
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


def start_fit(schedule, state: dict, deadline: float, log) -> tuple[HorizonFit, dict]:
    """The `cosine-time` fitter for this process, and the state with the horizon it starts from: a
    resumed run with a deadline continues from its saved horizon (the fit moves it from there); one
    without a deadline takes its planned steps, as `cosine` would."""
    fit = HorizonFit(schedule, deadline, processes=jax.process_count())
    saved = get_horizon(state) if isinstance(schedule, FittedCosine) else None
    if saved is not None:
        schedule.horizon = saved if fit.active else float(max(schedule.total, schedule.warm + 1))
        if schedule.horizon != saved:
            state = set_horizon(state, schedule.horizon)
    if fit.active:
        log(f"schedule: cosine-time, fitted to the deadline (planned {schedule.total:,} steps)")
    return fit, state


def make_feed(cfg: RunConfig, ds: Dataset, placement: Placement, *, feed: str | None = None,
              seeds: list[int] | None = None):
    """The feed `cfg` trains `ds` with (`feeds.resolve_feed`), placed by `placement`; `seeds`: the
    members of a sweep (default: the run's own seed)."""
    from .buckets import BucketFeed
    from .stream import WindowFeed

    name = feed or resolve_feed(cfg.data.feed, dataset_kind(cfg.data.name), carry_state=cfg.data.carry_state)
    K = steps_per_call(cfg)
    if name == "bucket":
        return BucketFeed(cfg, ds, placement, K, seeds)
    if name == "stream":
        return WindowFeed.stream(cfg, ds, placement, K, seeds)
    return WindowFeed.packed(cfg, ds, placement, K, seeds)


# ---------------------------------------------------------------- what an epoch is scored by
class Validation:
    """Validation after each epoch (and every `eval_every` steps): the whole val split as the feed's
    kind of data is scored (strings from a zero state, or a stream with the state carried); the
    per-epoch evaluation against the truth (KL, valid rates, samples) is each member's EpochEvaluator."""

    def __init__(self, cfg: RunConfig, ds: Dataset, feed, place: Placement):
        self.cfg, self.ds, self.feed = cfg, ds, feed
        self.stream = feed.kind == "stream"
        if self.stream:
            ts = feed.stream_info
            self.val_ids, self.unit, self.framed = ts["val"], ts["unit"], ts["framed"]
        else:
            from .buckets import BucketedSplit

            self.split = BucketedSplit.build(ds.val, cfg.train.max_tokens, cfg.train.max_buckets, place,
                                             cfg.data.chunk)
            self.eval_fn = place.eval_step(cfg)
            self.unit, self.framed = "token", True
        self._truth = None

    def evaluator(self, cfg: RunConfig, run: RunDir | None):
        from .evaluate import EpochEvaluator, truth_info

        if self._truth is None and self.ds.language is not None:
            self._truth = truth_info(self.ds, "val")  # once for every member
        return EpochEvaluator(cfg, self.ds, run, framed=self.framed, info=self._truth)

    def ce(self, params) -> dict:
        """{"val_ce_bits_per_token": ..., and for a stream its per-char/nats/window figures}."""
        if self.stream:
            from .stream import stream_metrics

            val = stream_metrics(params, self.cfg, self.val_ids, unit=self.unit)
            return {"val_ce_bits_per_token": val["ce_bits_per_token"],
                    **{f"val_{k}": v for k, v in val.items() if k.startswith(("bits_per", "nats_per"))}}
        bits, _ = self.split.score(self.eval_fn, params)
        return {"val_ce_bits_per_token": bits}

    def line(self, rec: dict) -> str:
        """The epoch line's validation part."""
        val = rec["val_ce_bits_per_token"]
        if self.stream:
            per = "char" if self.unit == "char" else "token"
            return (f"val {val:.4f} bits/{self.unit} ({rec[f'val_nats_per_{per}']:.4f} nats; "
                    f"{rec[f'val_nats_per_{per}_window64']:.4f} in 64-{self.unit} windows)")
        extra = f"  kl {rec['kl_bits_per_token']:.4f}" if "kl_bits_per_token" in rec else ""
        if "valid_rate_1.0" in rec:
            extra += f"  valid(T=0/1) {rec['valid_rate_0.0']:.3f}/{rec['valid_rate_1.0']:.3f}"
        return f"val {val:.4f} bits/token{extra}"


# ---------------------------------------------------------------- a cohort: one run, or a sweep's group
@dataclass
class Member:
    """One run of a cohort: its settings and run directory, and where it stands."""

    cfg: RunConfig
    run: RunDir
    name: str = ""
    ckpt: Checkpointer | None = None
    schedule: object = None
    evaluator: object = None
    best_val: float = math.inf
    diverged: int | None = None  # the step where a sweep froze it
    last: dict | None = None


@dataclass
class Cohort:
    """What the one loop trains: members (one for `seqgen train`; a sweep's group otherwise) sharing
    a dataset, a feed and one compiled program; `state` is the member's own, or the members' stacked
    along a leading axis."""

    members: list
    ds: Dataset
    place: Placement
    feed: object
    runner: object
    state: dict
    validation: Validation
    epoch: int = 0
    batch: int = 0
    log: Callable = print
    primary: bool = True
    t_start: float = 0.0
    compile_s: float = 0.0
    shapes: int = 0

    @property
    def sweep(self) -> bool:
        return len(self.members) > 1

    def member_state(self, i: int) -> dict:
        """Member i's state; a sweep's as host arrays (each checkpoint then belongs to no mesh)."""
        return jax.tree.map(lambda x: np.asarray(x[i]), self.state) if self.sweep else self.state


def new_state(cfg: RunConfig, tx, feed, total_steps: int, place: Placement, members: list | None = None) -> dict:
    """The initial train state of one run, or the stacked states of a sweep's members (each with its
    own seed and hyperparameters)."""
    from .step import hyperparameters

    def one(c: RunConfig) -> dict:
        st = init_train_state(c, tx)
        st["opt_state"] = tx.init(st["params"], hyperparameters(c, total_steps))
        return st

    if not members or len(members) == 1:
        st = one(members[0].cfg if members else cfg)
        if feed.spec.window is not None:
            st["carry"] = feed.init_carry()
        return place.put_state(st)
    states = [one(m.cfg) for m in members]
    st = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
    st["frozen"] = np.zeros(len(members), bool)
    if feed.spec.window is not None:
        st["carry"] = feed.init_carry()
    return place.put_state(st, members=len(members))


def open_member(m: Member, ds: Dataset, state_like: dict, resume: bool, primary: bool, log,
                which: str | int = "latest") -> tuple:
    """Restore a member's checkpoint (`which`, on resume) or write its new run's files: (state or None,
    epoch, batch). The checkpointer stays open on the member."""
    if m.ckpt is None:
        m.ckpt = m.run.checkpointer(keep=m.cfg.train.keep, primary=primary)
    if not resume:
        if primary:
            m.run.start(m.cfg, ds.vocab)
        return None, 0, 0
    train_like = {k: v for k, v in state_like.items() if k not in ("params", "frozen")}
    step0, params, rest, meta = m.ckpt.restore(which, abstract(state_like["params"]), abstract(train_like))
    m.best_val = meta.get("best_val", math.inf)
    if primary:
        m.run.truncate_metrics(step0, meta["epoch"])
        m.run.write_config(m.cfg)  # a resumed run records its new length (--epochs) too
    log(f"{m.name + ': ' if m.name else ''}resumed from step {step0} (epoch {meta['epoch'] + 1}, batch {meta['batch']})")
    return {"params": params, **rest}, meta["epoch"], meta["batch"]


def _member_like(state: dict, i: int | None) -> dict:
    """Shapes (and shardings, for one run) of a member's state: what its checkpoint restores into."""
    if i is None:
        return state
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)


def compile_cohort(c: Cohort) -> None:
    examples = c.feed.examples(c.state)
    c.compile_s = c.runner.compile(examples)
    c.shapes = len(examples)


# ---------------------------------------------------------------- the loop
class StepLog:
    """Step records (every `log_every` steps) and progress lines from blocks' metrics, fetched one
    block late; the `cosine-time` fit moves at the same points."""

    def __init__(self, c: Cohort, fit: HorizonFit, total: int):
        self.c, self.fit, self.total = c, fit, total
        self.tokens_since, self.t_log = 0, time.time()
        self.t_progress = self.t_first = time.time()
        self.tokens_here, self.g0 = 0, 0
        self.pending = None  # (first global step per member, live (M, K), device metrics, tokens (M,))

    def add(self, gfirst: np.ndarray, live: np.ndarray, metrics, tokens: np.ndarray) -> None:
        self.flush()
        self.pending = (gfirst, live, metrics, tokens)

    def flush(self) -> None:
        if self.pending is None:
            return
        c = self.c
        gfirst, live, m, tokens = self.pending
        self.pending = None
        m = jax.device_get(m)
        loss = np.asarray(m["loss"]).reshape(live.shape)
        gn = np.asarray(m["grad_norm"]).reshape(live.shape)
        self.tokens_since += int(tokens[0])
        self.tokens_here += int(tokens.sum())
        now = time.time()
        logged = False
        for i, mem in enumerate(c.members):
            every = mem.cfg.train.log_every
            recs = []
            for k in np.flatnonzero(live[i]):
                g = int(gfirst[i]) + int(k) + 1
                if c.sweep and loss[i, k] == 0.0:
                    continue  # a frozen member's step: nothing ran
                if g % every == 0:
                    recs.append({"step": g, "loss": float(loss[i, k]), "grad_norm": float(gn[i, k]),
                                 "lr": float(mem.schedule(g - 1)),
                                 "tokens_per_s": self.tokens_since / max(now - self.t_log, 1e-9)})
            if recs and c.primary:
                mem.run.append_metrics(*recs)
            logged |= bool(recs)
        if logged:
            self.tokens_since, self.t_log = 0, now
        if now - self.t_progress >= PROGRESS_SECONDS and live.any():
            last = int(np.flatnonzero(live[0])[-1]) if live[0].any() else 0
            g = int(gfirst[0]) + last + 1
            rate = self.tokens_here / max(now - self.t_first, 1e-9)
            left = (self.total - g) / max(g - self.g0, 1) * (now - self.t_first)
            who = f"{len(c.members)} members, " if c.sweep else ""
            unit = c.validation.unit
            c.log(f"  step {g:,}/{self.total:,}  loss {float(loss[0, last]) / LN2:.3f} bits/{unit}  "
                  f"{who}{rate / 1e3:.1f}k {unit}s/s  ETA {_fmt_time(left)}")
            self.t_progress = now

    def horizon(self, state: dict, gstep: int, crossed: bool) -> dict:
        if crossed and (h := self.fit.update(gstep, time.time())) is not None:
            state = set_horizon(state, h)
        return state


def _crossed(gfirst: int, n: int, every: int) -> int | None:
    """The last multiple of `every` among global steps gfirst + 1 .. gfirst + n, if any."""
    if every <= 0:
        return None
    hit = (gfirst + n) // every * every
    return hit if hit > gfirst else None


def _train(cfg: RunConfig, run: RunDir, resume: bool, log, dataset, mesh, primary: bool) -> dict:
    if resume and not run.has_checkpoints():
        # Killed during its first epoch (Ctrl-C): nothing to restore, so it starts again at step 0.
        log(f"{run.path} has no checkpoint yet: starting it from step 0 with its saved settings")
        resume = False
    elif not resume:
        run.check_fresh()
    if primary:
        run.check_writable()
    # The lock is released by `with` even when the run fails: a traceback keeps this frame (and an
    # unclosed lock file) alive, so an in-process retry would find its own run "in use".
    with run.lock() if primary else contextlib.nullcontext():
        return _train_locked(cfg, run, resume, log, dataset, mesh, primary)


def _train_locked(cfg: RunConfig, run: RunDir, resume: bool, log, dataset, mesh, primary: bool) -> dict:
    t_start = time.time()
    ds = dataset if dataset is not None else build_dataset(cfg.data)
    check_corpus(cfg.data, ds, "resuming")
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=len(ds.vocab)),
                  data=replace(cfg.data, content_hash=ds.info.get("content_hash", cfg.data.content_hash)))
    check_model_memory(cfg)  # before any parameter exists: an overcommitted allocation may not fail at once
    place = Placement(mesh if mesh is not None else make_mesh(cfg.train.devices))
    member = Member(cfg, run)
    c = build_cohort([member], ds, place, resume, log, primary, t_start)
    if c is None:
        return member.last or {}
    log(f"{ds.spec}: {len(ds.train):,} train / {len(ds.val):,} val sequences, vocab {len(ds.vocab)}; model "
        f"{cfg.model.embed}/{cfg.model.hidden}x{cfg.model.layers} ({count_params(c.state['params']):,} params) on "
        f"{place.n_devices} {jax.default_backend()} device(s){' (freed host memory kept)' if host_memory_kept() else ''}; compiled {c.shapes} shape(s) in {c.compile_s:.1f}s")
    log(f"train: {c.feed.describe()}")
    run_cohort(c)
    return member.last or {}


def build_cohort(members: list, ds: Dataset, place: Placement, resume: bool, log, primary: bool,
                 t_start: float) -> Cohort | None:
    """Feed, program and state for `members` (all of one shape), restored where they stand on resume
    and compiled ahead; None when there is nothing left to train."""
    cfg = members[0].cfg
    M = len(members)
    seeds = [m.cfg.train.seed for m in members]
    feed = make_feed(cfg, ds, place, seeds=seeds if M > 1 else None)
    totals = feed.first_step(cfg.train.epochs)
    tx = make_optimizer(cfg, int(totals[0]))
    for m, total in zip(members, totals):
        m.schedule = make_schedule(m.cfg, int(total))
    state = new_state(cfg, tx, feed, int(totals[0]), place, members)
    validation = Validation(cfg, ds, feed, place)
    epoch = batch = 0
    restored, positions = [], set()
    for i, m in enumerate(members):
        st, epoch, batch = open_member(m, ds, _member_like(state, i if M > 1 else None), resume, primary, log)
        restored.append(st)
        positions.add((epoch, batch))
        m.evaluator = validation.evaluator(m.cfg, m.run if primary else None)
    if resume:
        if M == 1:
            state = restored[0]
        else:
            if len(positions) > 1:
                # Killed while the members were checkpointing an epoch's end one after another: the
                # ones ahead go back to the epoch all of them finished.
                epoch, batch = min(positions)
                if batch or any(b for _, b in positions):
                    raise UserError(f"the sweep's members were saved at different points {sorted(positions)}; "
                                    "resume each member alone with seqgen train --resume, or start the sweep again")
                for i, m in enumerate(members):
                    recs = [r for r in m.run.epoch_records() if r["epoch"] == epoch]
                    if epoch and not recs:
                        raise UserError(f"{m.run.path} has no record of epoch {epoch}; start the sweep again")
                    restored[i], _, _ = open_member(m, ds, _member_like(state, i), True, primary, log,
                                                    recs[-1]["step"] if epoch else "latest")
            frozen = state["frozen"]
            state = place.put_state(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *restored),
                                    members=M)
            state["frozen"] = frozen
    if epoch >= cfg.train.epochs:
        log("nothing to do: the run has finished all its epochs")
        for m in members:
            m.ckpt.close()
            recs = m.run.epoch_records()
            m.last = recs[-1] if recs else {}
        return None
    runner = place.block_runner(cfg, tx, feed.spec, members=M, data_per_member=M > 1 and feed.kind == "packed")
    c = Cohort(members, ds, place, feed, runner, state, validation, epoch, batch, log, primary, t_start)
    compile_cohort(c)
    return c


def run_cohort(c: Cohort) -> None:
    """The one epoch loop: blocks of K steps from the feed, run on the device, records every block,
    a validation, evaluation and checkpoint per member after every epoch."""
    members, feed, cfg = c.members, c.feed, c.members[0].cfg
    M = len(members)
    if c.primary:
        for m in members:
            m.run.append_metrics({"event": "compile", "step": int(feed.first_step(c.epoch)[0]) + c.batch,
                                  "compile_seconds": round(c.compile_s, 3), "shapes": c.shapes, "feed": feed.kind,
                                  "devices": c.place.n_devices, "host_memory_kept": host_memory_kept(),
                                  "steps_per_call": feed.K, **({"members": M} if M > 1 else {})})
    deadline = c.t_start + cfg.train.max_time if cfg.train.max_time else math.inf
    fit, c.state = start_fit(members[0].schedule, c.state, deadline, c.log) if M == 1 else \
        (HorizonFit(None, math.inf), c.state)
    total = int(feed.first_step(cfg.train.epochs)[0])
    steps = StepLog(c, fit, total)
    steps.g0 = int(feed.first_step(c.epoch)[0]) + c.batch
    for epoch in range(c.epoch, cfg.train.epochs):
        first = c.batch if epoch == c.epoch else 0
        spe, g_epoch = feed.steps_in(epoch), feed.first_step(epoch)  # per member
        if first == 0:
            zero = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (M,)).copy(), zero_acc()) if M > 1 else zero_acc()
            c.state["acc"] = jax.device_put(zero, c.state["acc"]["nll"].sharding)
            if "carry" in c.state:
                c.state["carry"] = c.place.put_carry(feed.init_carry(), members=M)
        t_epoch = time.time()
        stopped = False
        for block in feed.blocks(epoch, first):
            c.state, m = c.runner(c.state, block.data, block.xs, block.live)
            done = block.first + np.array([int(np.flatnonzero(l)[-1]) + 1 if l.any() else first for l in block.live_np])
            K = block.live_np.shape[1]
            gfirst = g_epoch + block.first
            steps.add(gfirst, block.live_np, m, block.tokens)
            g0 = int(g_epoch[0] + done[0])
            c.state = steps.horizon(c.state, g0, _crossed(int(gfirst[0]), K, cfg.train.log_every) is not None)
            if _crossed(int(gfirst[0]), K, cfg.train.eval_every) is not None and (done < spe).all():
                for i, mem in enumerate(members):
                    rec = {"step": int(g_epoch[i] + done[i]), **c.validation.ce(c.member_state(i)["params"]),
                           "elapsed": time.time() - c.t_start}
                    if c.primary:
                        mem.run.append_metrics(rec)
            if _crossed(int(gfirst[0]), K, cfg.train.sample_every) is not None:
                text = members[0].evaluator.sample_texts(c.member_state(0)["params"], 1, 1.0, g0, 200)[0]
                c.log(f"  sample at step {g0}: {text!r}")
            if time.time() > deadline and (done < spe).any():
                steps.flush()
                for i, mem in enumerate(members):
                    save_at_deadline(mem, c.member_state(i), c.log, gstep=int(g_epoch[i] + done[i]), epoch=epoch,
                                     batch=int(done[i]), sweep=M > 1)
                stopped = True
                break
        if stopped:
            break
        steps.flush()
        close_epoch(c, epoch, t_epoch, spe, g_epoch)
    for mem in members:
        mem.ckpt.wait()
        mem.ckpt.close()


def close_epoch(c: Cohort, epoch: int, t_epoch: float, spe: np.ndarray, g_epoch: np.ndarray) -> None:
    """Each member's epoch record, checkpoint (into best/ too when val improved) and plots; a solo
    run that diverged stops with one line, a sweep's diverged member is reported and stays frozen."""
    M = len(c.members)
    accs = jax.device_get(c.state["acc"])
    frozen = np.asarray(jax.device_get(c.state["frozen"])) if "frozen" in c.state else np.zeros(M, bool)
    seconds = time.time() - t_epoch
    for i, mem in enumerate(c.members):
        acc = {k: float(np.asarray(v).reshape(-1)[i] if M > 1 else v) for k, v in accs.items()}
        gstep = int(g_epoch[i] + spe[i])
        if M == 1:
            check_epoch_finite(acc, mem.ckpt, mem.cfg, epoch, f" (steps {g_epoch[i] + 1}–{gstep})")
        elif frozen[i] and mem.diverged is None:
            mem.diverged = gstep
            c.log(f"{mem.name}: diverged in epoch {epoch + 1} (a loss or gradient not finite); frozen at its last "
                  f"finite state, the other members go on")
        st = c.member_state(i)
        nsteps = max(acc["steps"], 1.0)
        train_bits = acc["nll"] / max(acc["tokens"], 1.0) / LN2
        rec = {"epoch": epoch + 1, "step": gstep, "train_loss": train_bits * LN2, "train_ce_bits_per_token": train_bits,
               **c.validation.ce(st["params"]), "grad_norm_mean": acc["gn_sum"] / nsteps,
               "grad_norm_std": math.sqrt(max(acc["gn_sq"] / nsteps - (acc["gn_sum"] / nsteps) ** 2, 0.0)),
               "grad_norm_max": acc["gn_max"], "lr": float(mem.schedule(gstep - 1)), "seconds": seconds,
               "tokens_per_s": acc["tokens"] / max(seconds, 1e-9), "elapsed": time.time() - c.t_start}
        if mem.diverged is not None:
            rec["diverged_at_step"] = mem.diverged
        rec.update(mem.evaluator(st["params"], epoch + 1, rec["val_ce_bits_per_token"]))
        mem.best_val = record_epoch(mem, st, rec, epoch, c.primary)
        mem.last = rec
        if M == 1:
            left = (mem.cfg.train.epochs - epoch - 1) * seconds
            rate = rec["tokens_per_s"]
            speed = f"{rate / 1e6:.2f}M tok/s" if rate >= 1e5 else f"{rate / 1e3:.1f}k tok/s"
            c.log(f"epoch {epoch + 1}/{mem.cfg.train.epochs}  loss {train_bits:.4f}  {c.validation.line(rec)}  "
                  f"grad {rec['grad_norm_mean']:.3f}  {speed}  {_fmt_time(seconds)}  left ~{_fmt_time(left)}")
    if M > 1:
        vals = [m.last["val_ce_bits_per_token"] for m in c.members]
        c.log(f"epoch {epoch + 1}/{c.members[0].cfg.train.epochs}  {M} members  val {min(vals):.4f}–{max(vals):.4f} "
              f"bits/token  {_fmt_time(seconds)}")


def _saved(state: dict) -> dict:
    """What a member's checkpoint holds besides its parameters (a sweep's "frozen" flag is the
    sweep's business, not the run's)."""
    return {k: v for k, v in state.items() if k not in ("params", "frozen")}


def save_at_deadline(m: Member, state: dict, log, *, gstep: int, epoch: int, batch: int, sweep: bool = False) -> None:
    """--max-time reached mid-epoch: checkpoint where the loop stands."""
    if not sweep and not math.isfinite(float(jax.device_get(state["acc"])["nll"])):
        m.ckpt.close()
        raise UserError(f"training diverged before step {gstep}: the loss is not finite; lower --lr")
    m.ckpt.save(gstep, state["params"], _saved(state), {"epoch": epoch, "batch": batch, "best_val": m.best_val})
    log(f"{m.name + ': ' if m.name else ''}--max-time reached at step {gstep}; checkpoint saved, continue with --resume")


def record_epoch(m: Member, state: dict, rec: dict, epoch: int, primary: bool) -> float:
    """Append the epoch's record, checkpoint (into best/ too when val improved) and redraw the plots;
    returns the new best validation loss."""
    val = rec["val_ce_bits_per_token"]
    is_best = val < m.best_val
    best_val = min(m.best_val, val)
    if primary:
        m.run.append_metrics(rec)
    m.ckpt.save(rec["step"], state["params"], _saved(state), {"epoch": epoch + 1, "batch": 0, "best_val": best_val},
                best=is_best)
    if primary:
        from .plots import plot_run

        plot_run(m.run, m.cfg)
    return best_val


def check_epoch_finite(acc: dict, ckpt, cfg: RunConfig, epoch: int, steps: str) -> None:
    """Diverged: the last checkpoint (the previous epoch's) stays the latest, nothing NaN is saved."""
    if not (math.isfinite(float(acc["nll"])) and math.isfinite(float(acc["gn_max"]))):
        ckpt.wait()
        ckpt.close()
        raise UserError(f"training diverged in epoch {epoch + 1}{steps}: the loss or gradient is not finite; lower "
                        f"--lr (now {cfg.train.lr:g}) and train into a new --run-dir, or --resume from the last "
                        "finite checkpoint with a lower --lr in a copy")


class _CallableModule(__import__("types").ModuleType):
    """`seqgen_jax.train` is both this module and the API's `train` function: importing the module
    rebinds the package attribute to it, so calling it must still train (`sg.train(cfg, run_dir)`)."""

    def __call__(self, cfg: RunConfig, run_dir=None, *, resume: bool = False, log: Callable[[str], None] = print):
        return train(cfg, run_dir, resume=resume, log=log)


__import__("sys").modules[__name__].__class__ = _CallableModule
