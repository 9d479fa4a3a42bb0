"""The shared runner behind every study: configurations are plain dicts of dotted overrides.

Each configuration trains into DIR/<study>/<name>/ (a normal run directory), skipping finished ones
and resuming interrupted ones, optionally in parallel processes (one per device on a multi-GPU
machine), then is evaluated on the test split; the study writes summary.json, summary.md and plots."""
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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
    p = subprocess.run([sys.executable, "-m", "seqgen_jax", "eval", str(run), "--split", "test", "--json",
                        *eval_args], capture_output=True, text=True, env=env)
    if p.returncode:
        return {"config": name, "error": p.stderr.strip().splitlines()[-1] if p.stderr else "eval failed"}
    ev = json.loads(p.stdout)
    epochs = rd.epoch_records()
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
            lines.append(f"| {r['config']} | {r['epochs']} | {r['wall_s']:.0f} | {r['tokens_per_s'] / 1e3:.0f} k | "
                         f"{r['final_val_ce']:.4f} | {r['test_ce']:.4f} | {r['kl_bits_per_token']:.4f} | "
                         f"{r['valid_0']:.3f} | {r['valid_1']:.3f} | {study.claims.get(r['config'], '')} |")
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
    a = ap.parse_args(argv)
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
    jobs = [(str(out), n, study.dataset, o, (i % n_dev if n_dev > 1 and os.environ.get("SEQGEN_PIN_GPUS") else None),
             study.eval_args) for i, (n, o) in enumerate(configs.items())]
    t = time.time()
    if a.workers > 1:
        with ProcessPoolExecutor(a.workers) as ex:
            rows = list(ex.map(_train_one, jobs))
    else:
        rows = []
        for j in jobs:
            rows.append(_train_one(j))
            r = rows[-1]
            print(f"[{time.time() - t:6.0f}s] {r['config']}: " +
                  (r["error"] if "error" in r else f"test CE {r['test_ce']:.4f}" +
                   (f", KL {r['kl_bits_per_token']:.4f}, valid T=1 {r['valid_1']:.3f}" if "kl_bits_per_token" in r else "")),
                  flush=True)
    write_summary(study, rows, out, note)
    print(f"\n{study.name}: {len(rows)} configurations in {time.time() - t:.0f}s -> {out}/summary.md")
