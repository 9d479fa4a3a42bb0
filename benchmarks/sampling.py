"""Sampling n x 200 tokens: seqgen_jax's jitted sampler against a PyTorch loop with a carried state
(interleaved, with spreads) and the course's prefix re-run loop, at full length (no shortening, unlike
throughput.py --quick).

    python benchmarks/sampling.py [--embed 300 --hidden 300] [--n 1000] [--length 200] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import rows as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--json", default="benchmarks/results/sampling-cpu.json")
    a = ap.parse_args()
    e, h, n, L = a.embed, a.hidden, a.n, a.length
    st = harness.interleaved({"jax": R.jax_sample(e, h, 6, n, L),
                              "torch_careful": R.torch_sample(e, h, 6, n, L, device=a.device)},
                             work=n * L, repeats=a.repeats)
    st.update(harness.interleaved({"torch_course": R.torch_sample(e, h, 6, n, L, device=a.device, careful=False)},
                                  work=n * L, repeats=max(1, a.repeats // 2), min_seconds=0.0, warmup=0))
    out = {"model": [e, h], "n": n, "length": L, "stats": st,
           "jax_over_carried": harness.ratio(st["jax"], st["torch_careful"]),
           "jax_over_rerun": harness.ratio(st["jax"], st["torch_course"]),
           "lead_over_carried": harness.lead(st["jax"], st["torch_careful"])}
    print(f"({e},{h}) {n}x{L}: JAX {harness.fmt_stats(st['jax'])}, PyTorch carried {harness.fmt_stats(st['torch_careful'])}, "
          f"prefix re-run {harness.fmt_stats(st['torch_course'])} -> JAX / carried {out['jax_over_carried']:.2f}x "
          f"(lead {out['lead_over_carried']}), JAX / re-run {out['jax_over_rerun']:.0f}x")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
