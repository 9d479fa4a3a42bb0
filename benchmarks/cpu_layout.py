"""One train step on CPU under four device layouts, by layer width: one device per core with glibc's
allocator (`seqgen train`'s default for small steps), the same with freed host memory kept
(`SEQGEN_HOST_MALLOC=keep`, what `seqgen train` gives large steps: `_devices.keeps_host_memory_for`), one device with Eigen's threads (`SEQGEN_CPU_DEVICES=1`), and
one device with Eigen's threads off (`SEQGEN_CPU_DEVICES=1 XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`),
where XLA:CPU's own runtime still spreads the matmuls over the cores. Both one-device layouts keep host
memory.

The layout is fixed when JAX's CPU backend starts, so each measurement is a child process; the
layouts alternate round by round (the order rotates every round) so that a slow spell of the machine
hits all. Each child times the real `Placement.train_step` on random windows (B, T) after warm-up.

    python benchmarks/cpu_layout.py --hidden 384,512 --rounds 3 --json out/cpu_layout.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt_stats, lead, summary  # noqa: E402

# name -> (SEQGEN_CPU_DEVICES, XLA_FLAGS, SEQGEN_HOST_MALLOC)
LAYOUTS = {"per_core": (None, None, "system"), "per_core_kept": (None, None, "keep"), "threaded": ("1", None, None),
           "one_device": ("1", "--xla_cpu_multi_thread_eigen=false", None)}


def child(batch: int, steps: int, hidden: int, vocab: int, n: int) -> dict:
    import numpy as np

    import seqgen_jax  # noqa: F401  (sets the device layout before JAX starts)
    import jax
    from seqgen_jax.config import RunConfig
    from seqgen_jax.parallel import Placement
    from seqgen_jax.step import init_train_state, make_optimizer

    cfg = RunConfig().override(**{"model.vocab_size": vocab, "model.embed": 64, "model.hidden": hidden})
    tx = make_optimizer(cfg, 10_000)
    place = Placement.for_devices("all")
    state = place.put_state(init_train_state(cfg, tx))
    rng = np.random.default_rng(0)
    pool = 4 * batch
    data = place.put_rows(rng.integers(4, vocab, (pool + 1, steps + 1)).astype(np.int32))
    idxs = [place.put_idx(rng.permutation(pool)[:batch].astype(np.int32), pool) for _ in range(8)]
    step = place.train_step(cfg, tx)
    for k in range(3):
        state, _ = step(state, data, idxs[k])
    jax.block_until_ready(state)
    t = time.perf_counter()
    for k in range(n):
        state, _ = step(state, data, idxs[k % 8])
    jax.block_until_ready(state)
    sec = (time.perf_counter() - t) / n
    eigen = "xla_cpu_multi_thread_eigen=false" not in os.environ.get("XLA_FLAGS", "")
    from seqgen_jax._devices import host_memory_kept

    return {"devices": place.n_devices, "eigen_threads": eigen, "host_memory_kept": host_memory_kept(),
            "ms_per_step": 1e3 * sec,
            "tokens_per_s": batch * steps / sec}


def fastest(stats: dict[str, dict]) -> str:
    """The layout whose slowest round beats every other layout's fastest, else "within the spread"."""
    for name, s in stats.items():
        if all(lead(s, o) for other, o in stats.items() if other != name):
            return name
    return "within the spread"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="384,512", help="comma-separated layer widths")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64, help="time steps per window")
    ap.add_argument("--vocab", type=int, default=183)
    ap.add_argument("--n", type=int, default=15, help="timed train steps per child")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    widths = [int(h) for h in a.hidden.split(",")]
    if a.child:
        print(json.dumps(child(a.batch, a.steps, widths[0], a.vocab, a.n)))
        return 0
    rows = []
    for h in widths:
        runs = {name: [] for name in LAYOUTS}
        for r in range(a.rounds):
            order = list(LAYOUTS)[r % len(LAYOUTS):] + list(LAYOUTS)[:r % len(LAYOUTS)]
            for name in order:
                env = dict(os.environ)
                env.pop("XLA_FLAGS", None)
                env.pop("SEQGEN_CPU_DEVICES", None)
                env.pop("SEQGEN_HOST_MALLOC", None)
                devices, flags, malloc = LAYOUTS[name]
                if malloc is not None:
                    env["SEQGEN_HOST_MALLOC"] = malloc
                if devices is not None:
                    env["SEQGEN_CPU_DEVICES"] = devices
                if flags is not None:
                    env["XLA_FLAGS"] = flags
                p = subprocess.run([sys.executable, __file__, "--child", "--hidden", str(h), "--batch", str(a.batch),
                                    "--steps", str(a.steps), "--vocab", str(a.vocab), "--n", str(a.n)],
                                   capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    sys.exit(f"cpu_layout: the {name} child failed at hidden {h}: {p.stderr.strip().splitlines()[-1:]}")
                runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
        row = {"hidden": h, "batch": a.batch, "steps": a.steps, "rounds": a.rounds}
        for name, rs in runs.items():
            row[name] = {"devices": rs[0]["devices"], "eigen_threads": rs[0]["eigen_threads"],
                         "host_memory_kept": rs[0]["host_memory_kept"],
                         "tokens_per_s": summary([x["tokens_per_s"] for x in rs])}
        row["faster"] = fastest({name: row[name]["tokens_per_s"] for name in LAYOUTS})
        rows.append(row)
        print(f"H={h:5d} B×T={a.batch}×{a.steps}  " + "  ".join(
            f"{name} ({row[name]['devices']} dev) {fmt_stats(row[name]['tokens_per_s'])}" for name in LAYOUTS)
            + f" tokens/s -> {row['faster']}", flush=True)
    if a.json:
        from seqgen_jax.io import atomic_write_text

        atomic_write_text(a.json, json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
