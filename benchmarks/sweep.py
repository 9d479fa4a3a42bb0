"""A sweep of N seeds as one program against the same N runs trained one after another.

    python benchmarks/sweep.py [--quick] [--repeats 3] [--json OUT]

Each variant is the whole command a user runs, timed end to end in a fresh process (start-up,
data, compilation, training, per-epoch evaluation and checkpoints): `seqgen sweep NAME --seeds N`
against a shell loop of N `seqgen train NAME --seed i`. The variants alternate round by round
(`harness`-style interleaving) and each row gives the median and spread of the wall time and the
throughput as members x real training tokens per second. Rows: 8 seeds of the NDFA preset (32, 32);
without --quick also the course's brackets configuration (300, 300)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def rows(quick: bool) -> list[dict]:
    small = ["--n-train", "20000", "--n-val", "1000", "--n-test", "1000", "--epochs", "2"]
    out = [{"what": "ndfa preset (32, 32), 20,000 strings, 2 epochs", "name": "ndfa", "members": 8,
            "flags": small}]
    if not quick:
        out.append({"what": "brackets (300, 300) lr 0.01, 20,000 strings, 2 epochs", "name": "brackets", "members": 8,
                    "flags": small + ["--embed", "300", "--hidden", "300", "--lr", "0.01"]})
    return out


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed: {p.stderr.strip().splitlines()[-1] if p.stderr else p.returncode}")
    return time.perf_counter() - t


def tokens_per_member(name: str, flags: list[str]) -> int:
    """Real training tokens one member sees in the whole run (symbols + end markers, every epoch)."""
    from seqgen_jax.config import DataConfig
    from seqgen_jax.data import build_dataset

    n = int(flags[flags.index("--n-train") + 1])
    epochs = int(flags[flags.index("--epochs") + 1])
    ds = build_dataset(DataConfig(name=name, n_train=n, n_val=10, n_test=10))
    return int((ds.train.lengths + 1).sum()) * epochs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the NDFA row only (about 10 minutes on 2 CPU cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="benchmarks/results/sweep.json")
    args = ap.parse_args(argv)
    py = [sys.executable, "-m", "seqgen_jax"]
    out_rows = []
    for r in rows(args.quick):
        tmp = Path(tempfile.mkdtemp(prefix="seqgen-sweep-bench-"))
        env = dict(os.environ, SEQGEN_JAX_CACHE=str(tmp / "xla"))  # each variant starts from one shared cache
        times = {"sweep": [], "sequential": []}
        for rep in range(args.repeats):
            order = ["sweep", "sequential"] if rep % 2 == 0 else ["sequential", "sweep"]
            for v in order:
                d = tmp / f"{v}-{rep}"
                if v == "sweep":
                    t = run(py + ["sweep", r["name"], "--seeds", str(r["members"]), "--run-dir", str(d), *r["flags"]], env)
                else:
                    t = 0.0
                    for s in range(r["members"]):
                        t += run(py + ["train", r["name"], "--seed", str(s), "--run-dir", str(d / f"seed{s}"),
                                       *r["flags"]], env)
                times[v].append(t)
                print(f"{r['what']}: {v} repeat {rep + 1}: {t:.1f} s", flush=True)
                shutil.rmtree(d, ignore_errors=True)
        work = r["members"] * tokens_per_member(r["name"], r["flags"])
        stats = {v: harness.summary([work / t for t in ts]) for v, ts in times.items()}
        row = {"what": r["what"], "members": r["members"], "command_flags": r["flags"],
               "seconds": {v: harness.summary(ts) for v, ts in times.items()},
               "sweep": stats["sweep"], "sequential": stats["sequential"],
               "ratio": harness.ratio(stats["sweep"], stats["sequential"]),
               "lead": harness.lead(stats["sweep"], stats["sequential"])}
        out_rows.append(row)
        print(f"{r['what']}: sweep {harness.fmt_stats(row['sweep'])} against one after another "
              f"{harness.fmt_stats(row['sequential'])} member-tokens/s: {row['ratio']:.2f}x, lead {row['lead']}",
              flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    import jax

    meta = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "repeats": args.repeats, "quick": args.quick,
            "command": "python benchmarks/sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpf = path.with_suffix(".tmp")
    tmpf.write_text(json.dumps({"meta": meta, "rows": out_rows}, indent=2))
    tmpf.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
