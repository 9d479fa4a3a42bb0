"""The shared runner behind every study: configurations are plain dicts of dotted overrides.

Each configuration trains into DIR/<study>/<name>/ (a normal run directory), skipping finished ones
and resuming interrupted ones, optionally in parallel processes (one per device on a multi-GPU
machine), then is evaluated on the test split; the study writes summary.json, summary.md and plots.
Configurations that differ only in one setting a sweep can vary inside one program (the learning
rate, the clip, Adam's b1/b2, the warm-up), and every configuration when `--seeds N` asks for
several seeds, train as one `seqgen sweep` into DIR/<study>/<group>/<member>/; their rows give the
mean and standard deviation over the seeds."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqgen_jax.run import RunDir  # noqa: E402


@dataclass
class Study:
    name: str
    dataset: str
    configs: dict[str, dict]  # name -> dotted overrides on top of the dataset's preset
    quick: dict[str, dict]  # the --quick configurations (may shrink n_train, epochs)
    quick_note: str
    objective: str = "kl_bits_per_token"  # sorted ascending
    claims: dict[str, str] = field(default_factory=dict)  # config name -> the report's words
    eval_args: tuple = ("--samples", "1000", "--temperatures", "0,1", "--max-len", "500")
    seeds: int = 1  # seeds per configuration (`--seeds` overrides)


VMAPPABLE = ("train.lr", "train.clip", "train.adam_b1", "train.adam_b2", "train.warmup_steps")
_STATS = ("test_ce", "final_val_ce", "kl_bits_per_token", "valid_0", "valid_1", "prefix_valid_rate", "bits_per_char")


def _train_one(args: tuple) -> dict:
    """Train (or resume, or skip) one configuration, then evaluate it. Runs in its own process."""
    study_dir, name, dataset, overrides, device, eval_args = args
    from seqgen_jax.presets import preset_config
    from seqgen_jax.run import RunDir

    rd = RunDir(Path(study_dir) / name)
    run = rd.path
    env = dict(os.environ)
    if device is not None:  # one configuration per accelerator
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    cmd = [sys.executable, "-m", "seqgen_jax", "train", dataset, "--run-dir", str(run)]
    done = False
    if rd.exists():
        cfg = rd.load_config()
        epochs = rd.epoch_records()
        done = bool(epochs) and epochs[-1]["epoch"] >= cfg.train.epochs
        cmd.append("--resume")
    else:
        cfg = preset_config(dataset).override(**overrides)
    flags = _flags(overrides)
    if not done:
        p = subprocess.run(cmd + ([] if "--resume" in cmd else flags), capture_output=True, text=True, env=env)
        if p.returncode:
            return {"config": name, "error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed"}
    try:
        ev = _evaluate(run, eval_args, env)
    except RuntimeError as e:
        return {"config": name, "error": str(e)}
    return _row(name, ev, rd.epoch_records(), overrides)


def _evaluate(run: Path, eval_args: tuple, env=None) -> dict:
    p = subprocess.run([sys.executable, "-m", "seqgen_jax", "eval", str(run), "--split", "test", "--json",
                        *eval_args], capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr else "eval failed")
    return json.loads(p.stdout)


def groups_of(configs: dict[str, dict], seeds: int) -> list[list[str]]:
    """Configurations that can share one program: the same except in one vmappable setting (or
    alone, when more than one seed is asked for)."""
    by_key: dict[tuple, list[str]] = {}
    for name, o in configs.items():
        shared = {k: v for k, v in o.items() if k not in VMAPPABLE}
        by_key.setdefault((json.dumps(shared, sort_keys=True), tuple(sorted(k for k in o if k in VMAPPABLE))),
                          []).append(name)
    out = []
    for names in by_key.values():
        varying = [k for k in VMAPPABLE if len({json.dumps(configs[n].get(k)) for n in names}) > 1]
        if len(varying) <= 1 and (len(names) > 1 or seeds > 1):
            out.append(names)
        else:
            out += [[n] for n in names]
    return out


def _sweep_group(args: tuple) -> list[dict]:
    """One group of configurations x seeds as one `seqgen sweep`, each member evaluated; one row per
    configuration with the mean and spread over its seeds."""
    study_dir, names, dataset, configs, seeds, eval_args = args
    shared = {k: v for k, v in configs[names[0]].items() if k not in VMAPPABLE}
    varying = [k for k in VMAPPABLE if len({json.dumps(configs[n].get(k)) for n in names}) > 1]
    run_dir = Path(study_dir) / ("+".join(names) if len(names) <= 3 else f"{names[0]}+{len(names) - 1}")
    cmd = [sys.executable, "-m", "seqgen_jax", "sweep", dataset, "--run-dir", str(run_dir), "--seeds", str(seeds),
           *_flags({**shared, **{k: configs[names[0]][k] for k in VMAPPABLE if k in configs[names[0]] and k not in varying}})]
    if varying:
        cmd += ["--grid", f"{varying[0]}=" + ",".join(str(configs[n][varying[0]]) for n in names)]
    done = (run_dir / "sweep.json").exists()
    if not done:
        p = subprocess.run(cmd + (["--resume"] if (run_dir / "sweep-plan.json").exists() else []),
                           capture_output=True, text=True)
        if p.returncode:
            return [{"config": n, "error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed"} for n in names]
    report = json.loads((run_dir / "sweep.json").read_text())
    rows = []
    for n in names:
        want = {varying[0]: configs[n][varying[0]]} if varying else {}
        members = [m["name"] for m in report["ranked"] if all(m["values"].get(k) == v for k, v in want.items())]
        per = []
        for m in sorted(members):
            try:
                ev = _evaluate(run_dir / m, eval_args)
            except RuntimeError as e:
                per.append({"error": str(e)})
                continue
            epochs = RunDir(run_dir / m).epoch_records()
            per.append(_row(n, ev, epochs, configs[n]))
        ok = [r for r in per if "error" not in r]
        if not ok:
            rows.append({"config": n, "error": per[0]["error"] if per else "no members"})
            continue
        row = dict(ok[0])
        row.update({"seeds": len(ok), "members": sorted(members), "run_dir": str(run_dir)})
        for k in _STATS:
            vals = [r[k] for r in ok if r.get(k) is not None]
            if vals:
                row[k] = float(np.mean(vals))
                row[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def _row(name: str, ev: dict, epochs: list[dict], overrides: dict) -> dict:
    last = epochs[-1]
    row = {"config": name, "epochs": last["epoch"], "wall_s": last.get("elapsed"),
           "tokens_per_s": sum(e["tokens_per_s"] for e in epochs) / len(epochs),
           "final_val_ce": last["val_ce_bits_per_token"], "test_ce": ev["ce_bits_per_token"],
           **{k: v for k, v in overrides.items() if k != "data.imdb"}}
    if "kl_bits_per_token" in ev:
        row.update({"kl_bits_per_token": ev["kl_bits_per_token"], "valid_0": ev["valid_rate"].get("0.0"),
                    "valid_1": ev["valid_rate"].get("1.0"), "prefix_valid_rate": ev["prefix_valid_rate"]})
    else:
        row.update({"bits_per_char": ev["bits_per_char"], "repetition_rate": ev["repetition_rate"],
                    "reference_repetition_rate": ev["reference_repetition_rate"]})
    row["history"] = epochs
    return row


def _flags(overrides: dict) -> list[str]:
    """Every config field by its dotted name (`seqgen train --set`), so a study can set any of them."""
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={v}"]
    return out


def _plots(study: Study, rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "kl_bits_per_token" if any("kl_bits_per_token" in h for r in rows for h in r.get("history", [])) \
        else "val_ce_bits_per_token"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        h = r.get("history", [])
        ax.plot([e["epoch"] for e in h], [e.get(key) for e in h], "o-", ms=3, label=r["config"])
    if key == "kl_bits_per_token":
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=key.replace("_", " "), title=f"{study.name}: {key} per epoch")
    ax.legend(fontsize=7)
    fig.savefig(out / f"comparison_{key}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _pm(r: dict, k: str, d: int = 4) -> str:
    """A figure, with its standard deviation over seeds when there are several."""
    if r.get(k) is None:
        return "-"
    return f"{r[k]:.{d}f} ± {r[f'{k}_std']:.{d}f}" if f"{k}_std" in r and r.get("seeds", 1) > 1 else f"{r[k]:.{d}f}"


def _seeds(r: dict) -> str:
    return f" ({r['seeds']} seeds)" if r.get("seeds", 1) > 1 else ""


def write_summary(study: Study, rows: list[dict], out: Path, note: str) -> None:
    ok = [r for r in rows if "error" not in r]
    obj = study.objective if all(study.objective in r for r in ok) else "test_ce"
    ok.sort(key=lambda r: r.get(obj, float("inf")))
    (out / "summary.json").write_text(json.dumps({"study": study.name, "note": note, "objective": obj,
                                                  "rows": ok, "errors": [r for r in rows if "error" in r]},
                                                 indent=2))
    synthetic = any("kl_bits_per_token" in r for r in ok)
    lines = [f"# {study.name}", "", note, ""]
    if synthetic:
        lines += ["| config | epochs | wall s | tokens/s | val CE | test CE | KL | valid T=0 | valid T=1 | report |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in ok:
            lines.append(f"| {r['config']}{_seeds(r)} | {r['epochs']} | {r['wall_s']:.0f} | "
                         f"{r['tokens_per_s'] / 1e3:.0f} k | {_pm(r, 'final_val_ce')} | {_pm(r, 'test_ce')} | "
                         f"{_pm(r, 'kl_bits_per_token')} | {_pm(r, 'valid_0', 3)} | {_pm(r, 'valid_1', 3)} | "
                         f"{study.claims.get(r['config'], '')} |")
    else:
        lines += ["| config | epochs | wall s | tokens/s | val bits/char | test bits/char | repetition T=0.8 (real) | report |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ok:
            rep = r["repetition_rate"].get("0.8", next(iter(r["repetition_rate"].values())))
            lines.append(f"| {r['config']} | {r['epochs']} | {r['wall_s']:.0f} | {r['tokens_per_s'] / 1e3:.0f} k | "
                         f"{r['final_val_ce']:.4f} | {r['bits_per_char']:.4f} | {rep:.3f} "
                         f"({r['reference_repetition_rate']:.3f}) | {study.claims.get(r['config'], '')} |")
    for r in rows:
        if "error" in r:
            lines.append(f"\n{r['config']} failed: {r['error']}")
    lines += ["", "Per configuration: loss.png and grad_norm.png (the report's Figures 1-4) in its run directory.",
              "Comparison plot: comparison_*.png."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plots(study, ok, out)
    print("\n".join(lines))


def main(study: Study, argv=None) -> None:
    ap = argparse.ArgumentParser(description=f"the {study.name} study")
    ap.add_argument("--quick", action="store_true", help=study.quick_note)
    ap.add_argument("--out", default="out")
    ap.add_argument("--only", nargs="*", help="configuration names to run")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes (one per GPU on a multi-GPU box)")
    ap.add_argument("--list", action="store_true", help="print the configuration names and exit")
    ap.add_argument("--imdb", help="IMDb archive or folder (else $SEQGEN_IMDB)")
    ap.add_argument("--seeds", type=int, help=f"seeds per configuration (default {study.seeds}); several train as "
                    "one program with the configurations they can share it with")
    a = ap.parse_args(argv)
    seeds = a.seeds or study.seeds
    configs = study.quick if a.quick else study.configs
    if a.list:
        print("\n".join(configs))
        return
    if a.only:
        missing = [n for n in a.only if n not in configs]
        if missing:
            print(f"{study.name}: unknown configuration(s) {missing}; --list shows them", file=sys.stderr)
            sys.exit(2)
        configs = {n: configs[n] for n in a.only}
    out = Path(a.out) / study.name
    out.mkdir(parents=True, exist_ok=True)
    note = ("--quick: " + study.quick_note) if a.quick else "Full settings from the course report."
    print(note, flush=True)
    if a.imdb:
        configs = {n: {**o, "data.imdb": a.imdb} for n, o in configs.items()}
    n_dev = a.workers
    groups = groups_of(configs, seeds)
    singles = [g[0] for g in groups if len(g) == 1 and seeds == 1]
    jobs = [(str(out), n, study.dataset, configs[n], (i % n_dev if n_dev > 1 and os.environ.get("SEQGEN_PIN_GPUS") else None),
             study.eval_args) for i, n in enumerate(singles)]
    sweeps = [(str(out), g, study.dataset, configs, seeds, study.eval_args) for g in groups
              if not (len(g) == 1 and seeds == 1)]
    t = time.time()
    rows = []

    def report(r):
        print(f"[{time.time() - t:6.0f}s] {r['config']}{_seeds(r)}: " +
              (r["error"] if "error" in r else f"test CE {r['test_ce']:.4f}" +
               (f", KL {r['kl_bits_per_token']:.4f}, valid T=1 {r['valid_1']:.3f}" if "kl_bits_per_token" in r else "")),
              flush=True)

    for job in sweeps:  # one program each: they already keep the device busy
        for r in _sweep_group(job):
            rows.append(r)
            report(r)
    if a.workers > 1:
        with ProcessPoolExecutor(a.workers) as ex:
            rows += list(ex.map(_train_one, jobs))
    else:
        for j in jobs:
            rows.append(_train_one(j))
            report(rows[-1])
    write_summary(study, rows, out, note)
    print(f"\n{study.name}: {len(rows)} configurations in {time.time() - t:.0f}s -> {out}/summary.md")
