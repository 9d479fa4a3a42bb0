"""Sampling n x 200 tokens: seqgen_jax's jitted sampler against the course's prefix re-run loop and a
PyTorch loop with a carried state, at full length (no shortening, unlike throughput.py --quick).

    python benchmarks/sampling.py [--embed 300 --hidden 300] [--n 1000] [--length 200] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import jax_sample, torch_sample  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--json", default="benchmarks/results/sampling-cpu.json")
    a = ap.parse_args()
    j = jax_sample(a.embed, a.hidden, 6, a.n, a.length, repeats=3)
    carried, rerun = torch_sample(a, a.embed, a.hidden, 6, a.n, a.length, repeats=2, course_len=a.length)
    out = {"model": [a.embed, a.hidden], "n": a.n, "length": a.length, "jax_tokens_per_s": j,
           "torch_carried_tokens_per_s": carried, "torch_prefix_rerun_tokens_per_s": rerun,
           "jax_over_rerun": j / rerun, "jax_over_carried": j / carried}
    print(f"({a.embed},{a.hidden}) {a.n}x{a.length}: JAX {j / 1e6:.3f} M tok/s, PyTorch carried {carried / 1e6:.3f} M, "
          f"prefix re-run {rerun / 1e3:.2f} k -> JAX / re-run {j / rerun:.0f}x, JAX / carried {j / carried:.2f}x")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
