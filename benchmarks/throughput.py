"""Throughput of seqgen_jax against the PyTorch baseline (benchmarks/baseline_torch.py), shape by shape.

    python benchmarks/throughput.py [--quick] [--device cpu|gpu] [--precision fp32|tf32] [--json OUT]

Rows: train steps (forward + backward + clip + Adam) at fixed shapes; one epoch of brackets strings end
to end (bucketing and batching included; compile time reported apart); sampling n x 200 tokens.
Medians over repeats after warm-up, timed with device synchronisation. The table is printed last and
written as JSON with the device, versions, date and precision."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = [(1000, 10), (250, 40), (50, 200), (6000, 10), (300, 200)]
MODELS = [(32, 16, 6), (300, 300, 6), (250, 250, 100)]


def median_time(fn, sync, repeats, warmup=1):
    for _ in range(warmup):
        sync(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        sync(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


# ---------------------------------------------------------------- JAX side
def jax_setup(precision):
    import jax

    if precision == "fp32":
        jax.config.update("jax_default_matmul_precision", "highest")
    return jax


def jax_train_row(e, h, V, B, T, repeats):
    import jax
    import jax.numpy as jnp

    from seqgen_jax import sharding as shd
    from seqgen_jax.config import RunConfig
    from seqgen_jax.train import idx_placer, init_train_state, make_optimizer, make_train_step, state_sharding

    # As `seqgen train` runs: data parallel over every local device (on CPU, one per core).
    mesh = shd.make_mesh("all")
    cfg = RunConfig().override(**{"model.embed": e, "model.hidden": h, "model.vocab_size": V})
    tx = make_optimizer(cfg, 10_000)
    state = {"s": jax.device_put(init_train_state(cfg, tx), state_sharding(mesh))}
    step = make_train_step(cfg, tx, mesh)
    rng = np.random.default_rng(0)
    rows = rng.integers(4, V, size=(B + 1, T + 1)).astype(np.int32)
    rows[-1] = 0  # the all-padding row that fills batches up to a multiple of the devices
    data = shd.put(rows, shd.replicated(mesh))
    n_dev = mesh.devices.size
    idx = idx_placer(mesh)(np.concatenate([np.arange(B), np.full((-B) % n_dev, B)]).astype(np.int32))

    def run():
        state["s"], m = step(state["s"], data, idx)
        return m["loss"]

    t0 = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = time.perf_counter() - t0
    sec = median_time(run, jax.block_until_ready, repeats)
    return B * T / sec, compile_s


def jax_epoch(strings, e, h, budget):
    """(tokens/s of a warm epoch, compile seconds): bucketing and the per-step batches included."""
    import jax

    from seqgen_jax import sharding as shd
    from seqgen_jax.config import RunConfig
    from seqgen_jax.data.vocab import Ragged, Vocab
    from seqgen_jax.train import (BucketedSplit, idx_placer, epoch_order, init_train_state, make_optimizer,
                                  make_train_step, state_sharding)

    vocab = Vocab.from_symbols("()")
    cfg = RunConfig().override(**{"model.embed": e, "model.hidden": h, "model.vocab_size": len(vocab)})
    mesh = shd.make_mesh("all")
    tx = make_optimizer(cfg, 10_000)
    state = jax.device_put(init_train_state(cfg, tx), state_sharding(mesh))
    step = make_train_step(cfg, tx, mesh)
    put = idx_placer(mesh)
    times = []
    for epoch in range(2):
        t = time.perf_counter()
        split = BucketedSplit.build(Ragged.from_strings(strings, vocab), budget, cfg.train.max_buckets, mesh)
        for b, idx in epoch_order(split.plan, 0, epoch):
            state, m = step(state, split.data[b], put(split.device_idx(b, idx)))
        jax.block_until_ready(state["params"])
        times.append(time.perf_counter() - t)
    return split.n_tokens / times[1], times[0] - times[1], split


def jax_sample(e, h, V, n, length, repeats):
    import jax

    from seqgen_jax.config import ModelConfig
    from seqgen_jax.model import init_params
    from seqgen_jax.sample import _sample, padded_n

    cfg = ModelConfig(vocab_size=V, embed=e, hidden=h)
    params = init_params(cfg, 0)
    import jax.numpy as jnp

    prompt = jnp.asarray([1], jnp.int32)

    def run():
        return _sample(params, jax.random.key(0), jnp.float32(1.0), jnp.int32(0), prompt, cfg=cfg,
                       n=padded_n(n), max_len=length, early_exit=False)[0]

    return n * length / median_time(run, jax.block_until_ready, repeats)


# ---------------------------------------------------------------- PyTorch side
def torch_rows(args, e, h, V, B, T, repeats):
    import torch

    from baseline_torch import Trainer, sync

    dev = torch.device("cuda" if args.device == "gpu" else "cpu")
    tr = Trainer(V, e, h, dev)
    rng = np.random.default_rng(0)
    rows_np = rng.integers(4, V, size=(B, T + 1))
    rows = torch.as_tensor(rows_np, device=dev)
    seqs = rows_np.tolist()
    careful = B * T / median_time(lambda: tr.step_careful(rows), lambda _: sync(dev), repeats)
    course = B * T / median_time(lambda: tr.step_course(seqs), lambda _: sync(dev), repeats)
    return careful, course


def torch_epoch(args, split, strings, e, h, vocab_size=6):
    import torch

    from baseline_torch import Trainer, sync
    from seqgen_jax.buckets import epoch_order

    dev = torch.device("cuda" if args.device == "gpu" else "cpu")
    out = {}
    for variant in ("careful", "course"):
        tr = Trainer(vocab_size, e, h, dev)
        w2i = {"(": 4, ")": 5}
        enc = [[1] + [w2i[c] for c in s] + [2] for s in strings]
        plan = split.plan
        members = [plan.members(b) for b in range(len(plan.buckets))]
        if variant == "careful":  # pre-padded bucket matrices on the device, once
            mats = [torch.as_tensor(np.asarray(d), device=dev).long() for d in split.data]
        times = []
        for epoch in range(2):
            t = time.perf_counter()
            for b, idx in epoch_order(plan, 0, epoch):
                if variant == "careful":
                    tr.step_careful(mats[b][torch.as_tensor(idx, device=dev)])
                else:
                    real = [members[b][i] for i in idx if i < len(members[b])]
                    tr.step_course([enc[j] for j in real])
            sync(dev)
            times.append(time.perf_counter() - t)
        out[variant] = split.n_tokens / times[1]
    return out


def torch_sample(args, e, h, V, n, length, repeats, course_len):
    import torch

    from baseline_torch import Trainer, sync

    dev = torch.device("cuda" if args.device == "gpu" else "cpu")
    tr = Trainer(V, e, h, dev)
    carried = n * length / median_time(lambda: tr.sample_carried(n, length), lambda _: sync(dev), repeats)
    rerun = n * course_len / median_time(lambda: tr.sample_prefix_rerun(n, course_len), lambda _: sync(dev),
                                         max(1, repeats // 2), warmup=0)
    return carried, rerun


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, 15,000-string epochs, shorter "
                    "prefix-re-run sampling: fits 10 minutes on 2 CPU cores")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--precision", choices=("fp32", "tf32"), default="fp32",
                    help="fp32: strict float32 on both sides; tf32: both frameworks' TF32 defaults (GPU)")
    ap.add_argument("--json", default="benchmarks/results/throughput.json")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, to check the harness itself (tests)")
    args = ap.parse_args(argv)
    models, shapes, n_str, epoch_size, sample_ns, sample_len = MODELS, SHAPES, None, (300, 300), (1000, 10), 200
    if args.smoke:
        models, shapes, epoch_size, sample_ns, sample_len = [(8, 8, 6)], [(20, 5)], (8, 8), (10,), 20

    import os

    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    jax = jax_setup(args.precision)
    have_torch = not args.no_torch
    if have_torch:
        try:
            import torch

            from baseline_torch import set_precision

            set_precision(args.precision)
            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            print("PyTorch is not installed (pip install -e '.[torch]'): JAX rows only", file=sys.stderr)
            have_torch = False
    repeats = 1 if args.smoke else 3 if args.quick else 10
    rows = []

    def add(kind, what, jax_v, careful=None, course=None, **extra):
        r = {"kind": kind, "what": what, "jax": jax_v, "torch_careful": careful, "torch_course": course,
             "ratio_careful": jax_v / careful if careful else None,
             "ratio_course": jax_v / course if course else None, **extra}
        rows.append(r)
        fmt = lambda v: "-" if v is None else f"{v / 1e6:.3f}M"
        print(f"{kind:6} {what:32} jax {fmt(jax_v):>9}  careful {fmt(careful):>9}  course {fmt(course):>9}",
              flush=True)

    for e, h, V in models:
        for B, T in shapes:
            j, comp = jax_train_row(e, h, V, B, T, repeats)
            c = torch_rows(args, e, h, V, B, T, repeats) if have_torch else (None, None)
            add("train", f"({e},{h}) V={V} {B}x{T}", j, *c, compile_s=comp)

    from seqgen_jax.data import Brackets

    n_str = 300 if args.smoke else 15_000 if args.quick else 150_000
    strings = Brackets().strings(n_str, 0)
    ee, eh = epoch_size
    for budget in (10_000, 60_000):
        j, comp, split = jax_epoch(strings, ee, eh, budget)
        t = torch_epoch(args, split, strings, ee, eh) if have_torch else {}
        add("epoch", f"brackets {n_str} ({ee},{eh}) max {budget}", j, t.get("careful"), t.get("course"),
            compile_s=comp, epoch_s=split.n_tokens / j)

    course_len = sample_len // 4 if (args.quick or args.smoke) else sample_len
    for n in sample_ns:
        for e, h, V in ((ee, eh, 6),) if args.smoke else ((300, 300, 6), (32, 16, 6)):
            j = jax_sample(e, h, V, n, sample_len, repeats)
            c = torch_sample(args, e, h, V, n, sample_len, repeats, course_len) if have_torch else (None, None)
            add("sample", f"({e},{h}) {n}x{sample_len} (re-run {n}x{course_len})", j, *c)

    ratios = [r["ratio_careful"] for r in rows if r["ratio_careful"]]
    dev = jax.devices()[0]
    meta = {"date": datetime.date.today().isoformat(), "device": getattr(dev, "device_kind", str(dev)),
            "backend": jax.default_backend(), "jax": jax.__version__, "precision": args.precision,
            "quick": args.quick, "smoke": args.smoke, "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    if have_torch:
        import torch

        meta["torch"] = torch.__version__
    geo = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    meta["geomean_ratio_careful"] = geo
    print()
    print(f"device {meta['device']} ({meta['backend']}), jax {meta['jax']}, torch {meta.get('torch', '-')}, "
          f"precision {args.precision}, {meta['date']}")
    print("| kind | what | seqgen_jax tok/s | PyTorch careful | PyTorch course | JAX ÷ careful | JAX ÷ course |")
    print("|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else (f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k")
    g = lambda v: "-" if v is None else f"{v:.2f}"
    for r in rows:
        print(f"| {r['kind']} | {r['what']} | {f(r['jax'])} | {f(r['torch_careful'])} | {f(r['torch_course'])} | "
              f"{g(r['ratio_careful'])} | {g(r['ratio_course'])} |")
    if geo:
        print(f"geometric mean JAX ÷ careful PyTorch: {geo:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
