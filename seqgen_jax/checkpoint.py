"""Orbax checkpoints of a run: the only module that imports orbax.

Two folders (named by `run.RunDir`): the latest few checkpoints, and the one
with the lowest validation loss. Each holds three items: `params` (what sampling needs), `train`
(optimiser state, step, epoch accumulators) and `meta` (JSON: epoch, batch position, best loss).
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a killed run
never leaves a half-written checkpoint behind."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from .errors import UserError

logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax logs background failures the caller reports
# A failed background write (full disk) is reported once, as one line, by the caller; asyncio would
# also log it as "Task exception was never retrieved" with a page of tensorstore spec.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _drop_late_write_reports(previous):
    """When a background save fails (a full disk), orbax closes its event loop while other tensorstore
    writes are still in flight; as each ends, tensorstore's own thread posts the result to the closed
    loop and reports the RuntimeError as unraisable: a bare traceback per write, at any moment up to
    exit. The failure itself reaches the caller through orbax, so only these reports are dropped."""
    import threading

    def hook(u):
        if (u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed"
                and threading.current_thread() is not threading.main_thread()):
            return
        previous(u)
    hook.seqgen_filter = True
    return hook


if not getattr(sys.unraisablehook, "seqgen_filter", False):
    sys.unraisablehook = _drop_late_write_reports(sys.unraisablehook)

_OPEN: "weakref.WeakSet[Checkpointer]" = None  # set below, once the class exists


def is_disk_full(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return getattr(e, "errno", None) == 28 or "No space left" in text or "RESOURCE_EXHAUSTED: Error writing" in text


def settle(run_dir) -> None:
    """After a failure: let this run's background checkpoint writes end (their errors ignored) and
    remove orbax's temporary folders, so the last complete checkpoint is what --resume finds."""
    for ck in list(_OPEN):
        if ck.run_dir == Path(run_dir):
            for mgr in (ck.latest, ck.best):
                try:
                    mgr.wait_until_finished()
                except Exception:
                    pass
            ck._remove_temporaries()


def _manager(path: Path, keep: int, create: bool) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                        enable_async_checkpointing=True)
    return ocp.CheckpointManager(path.absolute(), options=opts, item_names=("params", "train", "meta"))


class Checkpointer:
    """The latest few checkpoints in `latest_dir`, the best one in `best_dir` (`RunDir.checkpointer`
    names both)."""

    def __init__(self, latest_dir, best_dir, *, keep: int = 3, create: bool = True, primary: bool = True):
        self.dirs = {"latest": Path(latest_dir), "best": Path(best_dir)}
        self.run_dir = self.dirs["latest"].parent  # for messages and `settle`
        self.primary = primary
        self.latest = _manager(self.dirs["latest"], keep, create)
        self.best = _manager(self.dirs["best"], 1, create)
        _OPEN.add(self)

    def save(self, step: int, params, train_state, meta: dict, best: bool = False) -> None:
        """Asynchronous: returns once the arrays are copied off the device; `wait()` before exit.
        A full disk (now or in the previous save's background write) becomes one UserError, with
        orbax's temporary folders removed: the last complete checkpoint stays the latest."""
        with self._disk_guard(step):
            self._save(step, params, train_state, meta, best)

    def _disk_guard(self, step: int):
        import contextlib

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except Exception as e:  # orbax wraps ENOSPC in ValueError / OSError from its threads
                if not is_disk_full(e):
                    raise
                settle(self.run_dir)
                raise UserError(f"the disk is full: checkpoint {step} could not be written under {self.run_dir} "
                                "(its temporary files were removed); free space, then continue with --resume") from None
        return guard()

    def _remove_temporaries(self) -> None:
        import shutil

        for d in self.dirs.values():
            if d.is_dir():
                for p in d.iterdir():
                    if "orbax-checkpoint-tmp" in p.name:
                        shutil.rmtree(p, ignore_errors=True)

    def _save(self, step: int, params, train_state, meta: dict, best: bool = False) -> None:
        args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                                  train=ocp.args.StandardSave(train_state),
                                  meta=ocp.args.JsonSave(meta))
        # A run resumed from an older checkpoint (the newest was deleted or corrupt) reaches steps that
        # may still exist here, in best/ above all: replace them rather than fail on the duplicate.
        for mgr in (self.latest, self.best) if best else (self.latest,):
            if step in mgr.all_steps():
                mgr.wait_until_finished()
                mgr.delete(step)
            mgr.save(step, args=args, force=True)

    def wait(self) -> None:
        with self._disk_guard(self.latest.latest_step() or 0):
            self.latest.wait_until_finished()
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    def _resolve(self, which: str | int) -> tuple[ocp.CheckpointManager, int]:
        if isinstance(which, str) and which not in ("latest", "best"):
            try:
                which = int(which)
            except ValueError:
                raise UserError(f"--checkpoint {which!r} must be latest, best or a step number") from None
        if which == "best":
            mgr, step = self.best, self.best.latest_step()
        elif which == "latest":
            mgr, step = self.latest, self.latest.latest_step()
        else:
            mgr, step = self.latest, int(which)
            if step not in self.latest.all_steps():
                if step in self.best.all_steps():
                    mgr = self.best
                else:
                    have = sorted(set(self.latest.all_steps()) | set(self.best.all_steps()))
                    raise UserError(f"no checkpoint at step {step} in {self.run_dir}; available: {have}")
        if step is None:
            other = self.latest.latest_step() if which == "best" else self.best.latest_step()
            if other is not None:
                alt = "latest" if which == "best" else "best"
                raise UserError(f"{self.run_dir} has no {which} checkpoint ({self.dirs['best' if which == 'best' else 'latest'].name}/ "
                                f"is empty); use --checkpoint {alt} (step {other})")
            raise UserError(f"{self.run_dir} has no checkpoints yet; train it first (seqgen train ... "
                            f"--run-dir {self.run_dir})")
        return mgr, step

    def restore(self, which: str | int, params_like, train_like=None):
        """(step, params, train_state or None, meta). `*_like`: pytrees of arrays or
        jax.ShapeDtypeStruct giving structure, shapes and shardings. For "latest", a corrupt newest
        checkpoint falls back to the previous one, saying so on stderr."""
        mgr, step = self._resolve(which)
        items = {"params": ocp.args.StandardRestore(params_like), "meta": ocp.args.JsonRestore()}
        if train_like is not None:
            items["train"] = ocp.args.StandardRestore(train_like)
        candidates = [step] + (sorted((s for s in mgr.all_steps() if s < step), reverse=True) if which == "latest" else [])
        first_error = None
        for s in candidates:
            try:
                out = mgr.restore(s, args=ocp.args.Composite(**items))
                _check_meta(out["meta"])
            except Exception as e:  # orbax raises many types for corrupt or mismatched data
                first_error = first_error or _describe(e)
                continue
            if s != step:
                print(f"warning: checkpoint {step} in {self.run_dir} cannot be restored ({first_error}); "
                      f"using the previous one, step {s}", file=sys.stderr)
            return s, out["params"], (out["train"] if train_like is not None else None), out["meta"]
        raise UserError(f"checkpoint {step} in {self.run_dir} cannot be restored ({first_error}); it is "
                        "corrupt or from a model of another shape")


import weakref  # noqa: E402

_OPEN = weakref.WeakSet()


def _check_meta(meta) -> None:
    """The JSON item: where in the run the checkpoint was taken. Wrong types would surface later as
    a TypeError deep in the loop; here they make the checkpoint count as corrupt."""
    ok = (isinstance(meta, dict) and all(isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool)
                                         and meta[k] >= 0 for k in ("epoch", "batch"))
          and isinstance(meta.get("best_val", 0.0), (int, float)) and not isinstance(meta.get("best_val"), bool))
    if not ok:
        raise ValueError(f"its meta item is damaged ({str(meta)[:80]})")


def _describe(e: Exception) -> str:
    """A short, readable reason: the first line, without reprs of bound methods and other objects."""
    msg = str(e).splitlines()[0] if str(e) else ""
    msg = re.sub(r"<[^<>]*>", "…", msg)[:160]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def abstract(tree):
    """ShapeDtypeStructs (with shardings where the arrays have them) for restore templates."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
