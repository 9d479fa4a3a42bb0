"""The example languages of experiments/languages/ trained with the defaults, one after the other:

    python experiments/your_languages.py [--out out] [--json experiments/results/your-languages.json]

For each file: `seqgen train SPEC --run-dir R` (the pcfg/pfsa preset), then `seqgen eval R --json
--samples 2000 --temperatures 0,1` on the 5,000 test strings; wall times of both, the floor (exact or
Monte-Carlo), the KL gap and the valid rates with their 95% intervals. Writes the JSON with the
command, the commit and the date, and prints a markdown table."""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["pcfg:experiments/languages/arith.cfg", "pcfg:experiments/languages/english.cfg",
         "pfsa:experiments/languages/even_ab.json", "pfsa:experiments/languages/guess.json"]


def seqgen(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqgen_jax", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/your-languages")
    ap.add_argument("--json", default="experiments/results/your-languages.json")
    args = ap.parse_args(argv)
    rows = []
    for spec in FILES:
        run = Path(args.out) / Path(spec.split(":", 1)[1]).stem
        if run.exists():
            import shutil

            shutil.rmtree(run)
        t = time.perf_counter()
        p = seqgen("train", spec, "--run-dir", run)
        train_s = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(p.stderr)
        t = time.perf_counter()
        p = seqgen("eval", run, "--json", "--samples", "2000", "--temperatures", "0,1")
        eval_s = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(p.stderr)
        e = json.loads(p.stdout)
        rows.append({"spec": spec, "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
                     **{k: e[k] for k in ("floor_bits_per_token", "floor_exact", "floor_stderr_bits_per_token",
                                          "kl_bits_per_token", "ce_bits_per_token", "valid_rate", "valid_rate_ci",
                                          "n_sequences")}})
        print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    out = {"date": datetime.date.today().isoformat(), "commit": commit.strip(),
           "command": "python experiments/your_languages.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows}
    path = ROOT / args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print("| spec | floor bits/token | test KL bits/token | valid T=1 [95% CI] | train wall | eval wall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        floor = (f"{r['floor_bits_per_token']:.4f} (exact)" if r["floor_exact"] else
                 f"{r['floor_bits_per_token']:.4f} ± {r['floor_stderr_bits_per_token']:.4f} (Monte-Carlo)")
        lo, hi = r["valid_rate_ci"]["1.0"]
        print(f"| `{r['spec']}` | {floor} | {r['kl_bits_per_token']:.4f} | {r['valid_rate']['1.0']:.4f} "
              f"[{lo:.3f}, {hi:.3f}] | {r['train_seconds']:.0f} s | {r['eval_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
