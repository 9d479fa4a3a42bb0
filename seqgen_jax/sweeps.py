"""Many models in one program: a grid of settings times seeds, trained together.

    sweep(cfg, grid={"train.lr": [0.001, 0.003]}, seeds=4, run_dir="runs/lr")

The members are the product of the grid and the seeds. Members that differ only in values that keep
the shapes (the seed and the data order it drives, lr, clip, Adam's b1/b2, warm-up) form one group and
train as one vmapped program through the same loop as `seqgen train` (train.run_cohort): their
hyperparameters are arrays in the optimiser state (step.HyperState), so one compilation serves every
value. Members that differ in anything else (shapes, the dataset, the schedule's kind) form other
groups, run one after another. Each member is an ordinary run directory DIR/<member>/ that `seqgen
sample`, `seqgen eval`, `sg.load` and `--resume` accept; DIR/sweep.json, DIR/summary.md and
DIR/sweep.png rank them. A member whose loss or gradient stops being finite is frozen at its last
finite state and reported; the others go on.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .config import RunConfig, validate
from .errors import UserError
from .run import MARKER, RunDir

# Settings members of one program may differ in: each is an array in the train state.
VMAPPABLE = ("train.seed", "train.lr", "train.clip", "train.adam_b1", "train.adam_b2", "train.warmup_steps")
PLAN = "sweep-plan.json"


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def plan_members(cfg: RunConfig, grid: dict[str, list], seeds: int) -> list[tuple[str, RunConfig, dict]]:
    """[(name, config, the grid cell's values)]: every grid combination times `seeds` seeds (the
    config's seed, +1, ...)."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UserError(f"--seeds {seeds!r} must be a whole number >= 1")
    grid = dict(grid or {})
    if "train.seed" in grid:
        raise UserError("train.seed is swept by --seeds N, not --grid")
    if "data.name" in grid:
        raise UserError("a sweep trains one dataset, the positional argument; sweep other datasets one by one")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise UserError(f"--grid {key}: give one or more values, e.g. --grid {key}=V1,V2")
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"--grid {key}: a value is repeated ({', '.join(map(_fmt, values))})")
        try:
            cfg.override(**{key: values[0]})
        except UserError:
            raise UserError(f"--grid {key}: unknown setting; use section.field, e.g. train.lr") from None
    out = []
    for combo in itertools.product(*grid.values()) if grid else [()]:
        cell = dict(zip(grid, combo))
        for s in range(seeds):
            seed = cfg.train.seed + s
            c = cfg.override(**cell, **{"train.seed": seed})
            parts = [f"{k.partition('.')[2]}={_fmt(v)}" for k, v in cell.items()] + [f"seed={seed}"]
            out.append(("-".join(parts).replace("/", "_"), c, cell))
    return out


def group_key(cfg: RunConfig) -> str:
    """Members with the same key share one program: the config with the vmappable settings blanked."""
    d = cfg.to_json()
    for key in VMAPPABLE:
        sec, _, name = key.partition(".")
        d[sec][name] = None
    return json.dumps(d, sort_keys=True)


def member_bytes(cfg: RunConfig, n_train_tokens: int) -> int:
    """What one member holds on the device: parameters, gradients and Adam's moments, the activations
    of one batch (gates, h, c, logits) and, packed, its own matrix of the epoch's strings."""
    m = cfg.model
    V = max(m.vocab_size, 8)
    n_params = V * m.embed + 4 * m.hidden * (m.embed + m.hidden + 1) + \
        (m.layers - 1) * 4 * m.hidden * (2 * m.hidden + 1) + m.hidden * V
    act = 4 * cfg.train.max_tokens * (6 * m.hidden * m.layers + 2 * V)
    return 4 * 4 * n_params + act + 4 * 2 * n_train_tokens


def sweep(cfg: RunConfig, grid: dict[str, list] | None = None, seeds: int = 1, run_dir=None, *,
          resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train every member (see the module docstring) into `run_dir`/<member>/; returns sweep.json's
    content. With `resume`, a killed sweep goes on from its members' last checkpoints."""
    import jax

    from ._devices import enable_compilation_cache, prepare_for_step
    from .data import build_dataset, check_corpus
    from .memory import available_bytes
    from .parallel import Placement, make_mesh
    from .train import Member, build_cohort, run_cohort

    members = plan_members(cfg, grid or {}, seeds)
    for name, c, _ in members:
        validate(c, f"member {name}")
    # Before anything starts JAX's backend, as the widest member would alone. Counting every member's
    # tokens made 8 NDFA seeds at (32, 32) keep the memory, and that sweep ran 29.5-32.7 s against
    # 28.6-29.9 s (3 alternating runs each, benchmarks/NOTES.md, attempt 38).
    widest = max(members, key=lambda m: m[1].model.hidden * m[1].model.layers)[1]
    prepare_for_step(widest.model.hidden, widest.model.layers, widest.train.max_tokens)
    root = RunDir(run_dir if run_dir is not None else Path("runs") / "sweep")
    if str(root.path).strip() == "":
        raise UserError("--run-dir is empty; give a directory for the sweep, e.g. --run-dir runs/lr")
    plan = {"dataset": cfg.data.name, "grid": {k: list(v) for k, v in (grid or {}).items()}, "seeds": seeds,
            "members": [n for n, _, _ in members]}
    _open_root(root, plan, resume)
    # `with`, not a name in this frame: a traceback keeps the frame alive, and with it the locks, so
    # an in-process retry would find its own sweep "in use".
    with root.lock():
        enable_compilation_cache()
        groups: dict[str, list[int]] = {}
        for i, (_, c, _) in enumerate(members):
            groups.setdefault(group_key(c), []).append(i)
        log(f"sweep of {len(members)} members in {len(groups)} program(s) into {root.path}")
        t0 = time.time()
        report_groups = []
        for gi, idx in enumerate(groups.values()):
            gcfg = members[idx[0]][1]
            ds = build_dataset(gcfg.data)
            check_corpus(gcfg.data, ds, "resuming")
            fix = {"model.vocab_size": len(ds.vocab), "data.content_hash": ds.info.get("content_hash")}
            group = []
            for i in idx:
                name, c, _ = members[i]
                m = Member(c.override(**fix), RunDir(root.path / name), name)
                group.append(m)
            need = len(group) * member_bytes(group[0].cfg, int((ds.train.lengths + 1).sum()))
            have = available_bytes()
            if need > 0.8 * have:
                fits = max(1, int(0.8 * have // max(need // len(group), 1)))
                raise UserError(f"this sweep's group of {len(group)} members needs about {need / 2**30:,.1f} GiB, more than "
                                f"{0.8 * have / 2**30:,.1f} GiB here; run at most {fits} members at once (fewer --seeds "
                                "or grid values)")
            member_resume = resume and all(m.run.has_checkpoints() for m in group)
            with contextlib.ExitStack() as locks:
                for m in group:
                    if not member_resume:
                        if m.run.exists() and not resume:
                            raise UserError(f"{m.run.path} already holds a run; pass --resume to continue the sweep")
                        if m.run.path.exists() and not (m.run.path / MARKER).exists() and any(m.run.path.iterdir()):
                            raise UserError(f"{m.run.path} is not a run of this sweep; move it away")
                        if m.run.exists():  # a first epoch killed before any checkpoint: start this group again
                            import shutil

                            shutil.rmtree(m.run.path)
                    m.run.check_writable()
                    locks.enter_context(m.run.lock())
                mesh = make_mesh(gcfg.train.devices)
                place = Placement(mesh)
                t_group = time.time()
                log(f"program {gi + 1}/{len(groups)}: {len(group)} members ({', '.join(m.name for m in group[:4])}"
                    f"{', ...' if len(group) > 4 else ''}) on {place.n_devices} {jax.default_backend()} device(s)")
                c = build_cohort(group, ds, place, member_resume, log, True, t_group)
                if c is not None:
                    log(f"  compiled {c.shapes} shape(s) in {c.compile_s:.1f}s; {c.feed.describe()}")
                    run_cohort(c)
                report_groups.append({"members": [m.name for m in group], "seconds": round(time.time() - t_group, 2),
                                      "compile_seconds": round(c.compile_s, 3) if c is not None else None})
        report = write_reports(root, members, plan, report_groups)
        log(f"sweep done in {time.time() - t0:.0f}s: {root.path / 'summary.md'}")
        return report


def _open_root(root: RunDir, plan: dict, resume: bool) -> None:
    """A sweep directory is new (empty or missing), or on --resume one holding the same plan."""
    path = root.path
    plan_path = path / PLAN
    if path.is_file():
        raise UserError(f"--run-dir {path} is a file; choose a directory")
    if resume:
        if not plan_path.is_file():
            raise UserError(f"--resume: {path} is not a sweep directory (no {PLAN}); start it without --resume")
        saved = json.loads(plan_path.read_text(encoding="utf-8"))
        if saved != plan:
            raise UserError(f"--resume: {path} holds another sweep ({saved.get('dataset')}, grid {saved.get('grid')}, "
                            f"{saved.get('seeds')} seeds); resume it with its own settings or choose a new --run-dir")
        return
    if path.is_dir() and any(path.iterdir()):
        if plan_path.is_file():
            raise UserError(f"{path} already holds a sweep; pass --resume to continue it or choose a new --run-dir")
        raise UserError(f"--run-dir {path} is not empty; choose a new or empty directory for the sweep")
    from .io import atomic_write_json

    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / MARKER).write_text("written by seqgen_jax: this directory holds a sweep\n")
        atomic_write_json(plan_path, plan)
    except OSError as e:
        raise UserError(f"cannot write the sweep directory {path}: {e.strerror or e}; choose another --run-dir") from None


# ---------------------------------------------------------------- reports
_KEYS = ("val_ce_bits_per_token", "kl_bits_per_token", "valid_rate_1.0", "valid_rate_0.0")


def _stats(xs: list[float]) -> dict:
    a = np.array([x for x in xs if x is not None and math.isfinite(x)], float)
    if a.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def write_reports(root: RunDir, members, plan: dict, groups: list) -> dict:
    """sweep.json (every member's last and best figures, per grid cell mean and spread over seeds),
    summary.md (both tables, ranked by validation cross-entropy) and sweep.png (validation curves)."""
    from .io import atomic_write_json, atomic_write_text

    rows = []
    for name, c, cell in members:
        recs = RunDir(root.path / name).epoch_records()
        last = recs[-1] if recs else {}
        row = {"name": name, "values": {k: v for k, v in cell.items()}, "seed": c.train.seed,
               "epochs": last.get("epoch", 0), "best_val_ce_bits_per_token":
                   min((r["val_ce_bits_per_token"] for r in recs if r.get("val_ce_bits_per_token") is not None),
                       default=None),
               "diverged_at_step": next((r["diverged_at_step"] for r in recs if "diverged_at_step" in r), None),
               **{k: last.get(k) for k in _KEYS if k in last}}
        rows.append(row)
    rank = lambda r: (r.get("val_ce_bits_per_token") is None, r.get("val_ce_bits_per_token") or 0.0)  # noqa: E731
    rows.sort(key=rank)
    cells: dict[str, dict] = {}
    for r in rows:
        key = json.dumps(r["values"], sort_keys=True)
        cells.setdefault(key, {"values": r["values"], "members": []})["members"].append(r)
    cell_rows = []
    for cell in cells.values():
        out = {"values": cell["values"], "seeds": len(cell["members"])}
        for k in _KEYS:
            if any(k in m for m in cell["members"]):
                out[k] = _stats([m.get(k) for m in cell["members"]])
        out["diverged"] = sum(m["diverged_at_step"] is not None for m in cell["members"])
        cell_rows.append(out)
    cell_rows.sort(key=lambda c: (c["val_ce_bits_per_token"]["mean"] is None,
                                  c["val_ce_bits_per_token"]["mean"] or 0.0))
    report = {**plan, "ranked": rows, "cells": cell_rows, "groups": groups}
    atomic_write_json(root.path / "sweep.json", report)
    atomic_write_text(root.path / "summary.md", _summary_md(report))
    _plot(root, [n for n, _, _ in members])
    return report


def _pm(s: dict | None, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _summary_md(report: dict) -> str:
    grid = report["grid"]
    has_kl = any("kl_bits_per_token" in r for r in report["ranked"])
    lines = [f"# Sweep: {report['dataset']}", "",
             f"{len(report['ranked'])} members: grid {json.dumps(grid) if grid else '(none)'} x {report['seeds']} "
             f"seed(s), in {len(report['groups'])} program(s).", "",
             "## Grid cells (mean ± standard deviation over seeds, ranked by validation cross-entropy)", ""]
    head = ["cell", "seeds", "val CE (bits/token)"] + (["KL (bits/token)", "valid @ T=1"] if has_kl else []) + ["diverged"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in report["cells"]:
        name = ", ".join(f"{k.partition('.')[2]}={_fmt(v)}" for k, v in c["values"].items()) or "(defaults)"
        row = [name, str(c["seeds"]), _pm(c.get("val_ce_bits_per_token"))]
        if has_kl:
            row += [_pm(c.get("kl_bits_per_token")), _pm(c.get("valid_rate_1.0"), 3)]
        lines.append("| " + " | ".join(row + [str(c["diverged"])]) + " |")
    lines += ["", "## Members (ranked by validation cross-entropy)", ""]
    head = ["member", "epochs", "val CE", "best val CE"] + (["KL", "valid @ T=1"] if has_kl else []) + ["status"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    g = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in report["ranked"]:
        row = [r["name"], str(r["epochs"]), g(r.get("val_ce_bits_per_token")), g(r.get("best_val_ce_bits_per_token"))]
        if has_kl:
            row += [g(r.get("kl_bits_per_token")), g(r.get("valid_rate_1.0"), 3)]
        status = f"diverged at step {r['diverged_at_step']}" if r["diverged_at_step"] is not None else "ok"
        lines.append("| " + " | ".join(row + [status]) + " |")
    return "\n".join(lines) + "\n"


def _plot(root: RunDir, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        recs = RunDir(root.path / name).epoch_records()
        if recs:
            ax.plot([r["epoch"] for r in recs], [r["val_ce_bits_per_token"] for r in recs], "o-", lw=1, ms=3,
                    label=name if len(names) <= 12 else None)
    ax.set(xlabel="epoch", ylabel="validation cross-entropy (bits/token)", title="Sweep: validation per member")
    if len(names) <= 12:
        ax.legend(fontsize=7)
    from .plots import _save

    _save(fig, root.path / "sweep.png")
