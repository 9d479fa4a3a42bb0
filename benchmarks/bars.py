"""The training bars on this machine, end to end through the `seqgen` CLI with default settings.

    python benchmarks/bars.py [--only brackets ndfa toy] [--bucket-too] [--out benchmarks/results]

`--only` with no names re-measures the epoch figure alone; rows not re-measured keep their own command
and commit.

For each dataset: `seqgen train NAME` (preset defaults, an empty compilation cache) timed as
wall-clock, compilation included, then `seqgen eval RUN --split test --samples 2000`; prints KL, valid rates and the time against the
bars and writes bars.json. Also measures the epoch throughput of 150,000 brackets strings at (32, 16)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARS = {  # (seconds, max KL bits/token, min valid rate at T = 1)
    "brackets": (90, 0.005, 0.98),
    "ndfa": (120, 0.005, 0.99),
    "toy": (600, 0.01, 0.90),
}


def seqgen(*args, env=None):
    return subprocess.run([sys.executable, "-m", "seqgen_jax", *map(str, args)], capture_output=True, text=True,
                          env=env)


def cold(tmp: Path, name: str) -> dict:
    """An empty persistent compilation cache: the compile time a first-time user pays."""
    import os

    d = tmp / f"xla-{name}"
    d.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, SEQGEN_JAX_CACHE=str(d))


def epoch_throughput(warm: int = 5) -> dict:
    """Warm-epoch tokens/s of 150,000 brackets strings at (32, 16), budget 10,000, with the feed
    `seqgen train` picks (auto): median, min and max over `warm` epochs after the first."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from rows import jax_epoch

    from seqgen_jax.data import Brackets
    from seqgen_jax.feeds import resolve_feed

    feed = resolve_feed("auto", "language", carry_state=True)
    (run, sync), _, _, tokens = jax_epoch(Brackets().strings(150_000, 0), 32, 16, 10_000, feed=feed)
    times = []
    for _ in range(warm + 1):
        t = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - t)
    rates = tokens / np.array(times[1:])
    return {"tokens_per_s": float(np.median(rates)), "min": float(rates.min()), "max": float(rates.max()),
            "seconds": float(np.median(times[1:])), "epochs": warm}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(BARS))
    ap.add_argument("--bucket-too", action="store_true", help="also train brackets with --feed bucket (the "
                    "course's batching) for the feed comparison")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    out_path = Path(a.out) / "bars.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}  # --only updates its rows
    tmp = Path(tempfile.mkdtemp(prefix="seqgen-bars-"))
    written = []
    for name in a.only:
        run = tmp / name
        t = time.perf_counter()
        p = seqgen("train", name, "--run-dir", run, env=cold(tmp, name))
        train_s = time.perf_counter() - t
        if p.returncode:
            print(p.stderr)
            continue
        e = json.loads(seqgen("eval", run, "--split", "test", "--samples", "2000", "--json").stdout)
        secs, kl_bar, valid_bar = BARS[name]
        comp = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        r = {"train_seconds": train_s, "kl_bits_per_token": e["kl_bits_per_token"], "feed": comp.get("feed"),
             "compile_seconds": comp.get("compile_seconds"), "shapes": comp.get("shapes"),
             "valid_rate": e["valid_rate"], "ce_bits_per_token": e["ce_bits_per_token"],
             "entropy_bits_per_token": e["entropy_bits_per_token"], "prefix_valid_rate": e["prefix_valid_rate"],
             "bars": {"seconds": secs, "kl": kl_bar, "valid_rate_1.0": valid_bar},
             "pass": train_s <= secs and e["kl_bits_per_token"] <= kl_bar and e["valid_rate"]["1.0"] >= valid_bar}
        results[name] = r
        written.append(name)
        print(f"{name:9} train {train_s:6.1f}s (bar {secs}s)  KL {r['kl_bits_per_token']:.4f} (bar {kl_bar})  "
              f"valid T=0 {e['valid_rate']['0.0']:.4f}  T=1 {e['valid_rate']['1.0']:.4f} (bar {valid_bar})  "
              f"{'PASS' if r['pass'] else 'MISS'}", flush=True)
    if a.bucket_too:
        run = tmp / "brackets-bucket"
        t = time.perf_counter()
        p = seqgen("train", "brackets", "--run-dir", run, "--feed", "bucket", env=cold(tmp, "bucket"))
        train_s = time.perf_counter() - t
        if p.returncode == 0:
            e = json.loads(seqgen("eval", run, "--split", "test", "--samples", "2000", "--json").stdout)
            comp = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
            results["brackets_bucket_feed"] = {"train_seconds": train_s, "kl_bits_per_token": e["kl_bits_per_token"],
                                               "valid_rate": e["valid_rate"], "compile_seconds": comp["compile_seconds"],
                                               "shapes": comp["shapes"]}
            written.append("brackets_bucket_feed")
            print(f"brackets --feed bucket: train {train_s:.1f}s  KL {e['kl_bits_per_token']:.4f}  valid T=1 "
                  f"{e['valid_rate']['1.0']:.4f}  compiled {comp['shapes']} shapes in {comp['compile_seconds']:.1f}s",
                  flush=True)
    ep = epoch_throughput()
    results["epoch_brackets_32_16"] = {**ep, "bar_tokens_per_s": 1.5e6}
    written.append("epoch_brackets_32_16")
    print(f"epoch of 150,000 brackets strings at (32, 16): {ep['tokens_per_s'] / 1e6:.2f} M tokens/s "
          f"({ep['min'] / 1e6:.2f}-{ep['max'] / 1e6:.2f} M over {ep['epochs']} warm epochs; bar 1.5 M)")
    import datetime

    # --only updates some rows: each row carries the command and commit of the run that wrote it.
    meta = {"date": datetime.date.today().isoformat(), "command": "python benchmarks/bars.py " + " ".join(sys.argv[1:]),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    for name in written:
        results[name]["meta"] = meta
    results["meta"] = meta
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bars.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
