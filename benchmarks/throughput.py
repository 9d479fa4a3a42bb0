"""Throughput of seqgen_jax against the PyTorch baseline (benchmarks/baseline_torch.py), shape by shape.

    python benchmarks/throughput.py [--quick] [--device cpu|gpu] [--precision fp32|tf32|bf16] [--json OUT]

Rows: train steps (forward + backward + clip + Adam) at fixed shapes; one epoch of brackets strings end
to end (bucketing and batching included; compile time reported apart); sampling n x 200 tokens.
Every row runs seqgen_jax and both PyTorch variants interleaved over `--repeats` rounds
(`harness.interleaved`) and reports median and min-max of each; "lead" is claimed only where JAX's
slowest repeat beats careful PyTorch's fastest. The table is printed last and written as JSON with
the device, versions, date and precision."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import rows as R  # noqa: E402

SHAPES = [(1000, 10), (250, 40), (50, 200), (6000, 10), (300, 200)]
MODELS = [(32, 16, 6), (300, 300, 6), (250, 250, 100)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15,000-string epochs and shorter prefix-re-run "
                    "sampling: fits about 10 minutes on 2 CPU cores")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                    help="fp32: strict float32 on both sides; tf32: both frameworks' TF32 (GPU); bf16: bf16 "
                         "matmuls (JAX --precision bf16, PyTorch autocast)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per row (>= 5 for a claim)")
    ap.add_argument("--json", default="benchmarks/results/throughput.json")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, to check the harness itself (tests)")
    args = ap.parse_args(argv)
    models, shapes, epoch_size, sample_ns, sample_len = MODELS, SHAPES, (300, 300), (1000, 10), 200
    if args.smoke:
        models, shapes, epoch_size, sample_ns, sample_len = [(8, 8, 6)], [(20, 5)], (8, 8), (10,), 20
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    R.jax_precision(args.precision)
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
    bf16 = args.precision == "bf16"
    rep = max(1, args.repeats)
    min_s = 0.01 if args.smoke else 0.05
    out_rows = []

    def add(kind, what, stats, **extra):
        j, c, k = stats.get("jax"), stats.get("torch_careful"), stats.get("torch_course")
        r = {"kind": kind, "what": what, "repeats": rep, "jax": j, "torch_careful": c, "torch_course": k,
             "ratio_careful": harness.ratio(j, c), "ratio_course": harness.ratio(j, k), "lead": harness.lead(j, c),
             **extra}
        out_rows.append(r)
        print(f"{kind:6} {what:36} jax {harness.fmt_stats(j):>26}  careful {harness.fmt_stats(c):>26}  "
              f"course {harness.fmt_stats(k):>26}  lead {r['lead']}", flush=True)

    for e, h, V in models:
        for B, T in shapes:
            jv, comp = R.jax_train(e, h, V, B, T, precision=args.precision)
            variants = {"jax": jv}
            if have_torch:
                variants["torch_careful"] = R.torch_train(e, h, V, B, T, device=args.device, bf16=bf16)
                if not bf16:
                    variants["torch_course"] = R.torch_train(e, h, V, B, T, device=args.device, careful=False)
            add("train", f"({e},{h}) V={V} {B}x{T}", harness.interleaved(variants, work=B * T, repeats=rep,
                                                                        min_seconds=min_s), compile_s=comp)

    from seqgen_jax.data import Brackets

    n_str = 300 if args.smoke else 15_000 if args.quick else 150_000
    strings = Brackets().strings(n_str, 0)
    ee, eh = epoch_size
    n_ep = 1 + (2 if args.smoke else rep)  # the first epoch compiles
    for budget in (10_000, 60_000):
        times, comp, split, prep = R.jax_epoch(strings, ee, eh, budget, precision=args.precision, epochs=n_ep,
                                         max_buckets=3 if args.smoke else 12)
        stats = {"jax": harness.summary([split.n_tokens / t for t in times[1:]])}
        if have_torch:
            for variant, careful in (("torch_careful", True), ("torch_course", False)):
                if bf16 and not careful:
                    continue
                tt = R.torch_epoch(split, strings, ee, eh, device=args.device, careful=careful, bf16=bf16,
                                   epochs=n_ep)
                stats[variant] = harness.summary([split.n_tokens / t for t in tt[1:]])
        add("epoch", f"brackets {n_str} ({ee},{eh}) max {budget}", stats, compile_s=comp,
            epoch_s=split.n_tokens / stats["jax"]["median"], prep_s=round(prep, 3))

    course_len = sample_len // 4 if (args.quick or args.smoke) else sample_len
    for n in sample_ns:
        for e, h, V in ((ee, eh, 6),) if args.smoke else ((300, 300, 6), (32, 16, 6)):
            variants = {"jax": R.jax_sample(e, h, V, n, sample_len)}
            if have_torch:
                variants["torch_careful"] = R.torch_sample(e, h, V, n, sample_len, device=args.device)
            stats = harness.interleaved(variants, work=n * sample_len, repeats=rep, min_seconds=min_s)
            if have_torch:  # the re-run loop is slow: timed apart, fewer rounds
                stats.update(harness.interleaved(
                    {"torch_course": R.torch_sample(e, h, V, n, course_len, device=args.device, careful=False)},
                    work=n * course_len, repeats=max(1, rep // 2), min_seconds=0.0, warmup=0))
            add("sample", f"({e},{h}) {n}x{sample_len} (re-run {n}x{course_len})", stats)

    ratios = [r["ratio_careful"] for r in out_rows if r["ratio_careful"]]
    dev = jax.devices()[0]
    meta = {"date": datetime.date.today().isoformat(), "device": getattr(dev, "device_kind", str(dev)),
            "backend": jax.default_backend(), "jax": jax.__version__, "precision": args.precision,
            "quick": args.quick, "smoke": args.smoke, "repeats": rep, "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if have_torch:
        import torch

        meta["torch"] = torch.__version__
    meta["geomean_ratio_careful"] = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    print()
    print(f"device {meta['device']} ({meta['backend']}), jax {meta['jax']}, torch {meta.get('torch', '-')}, "
          f"precision {args.precision}, {rep} interleaved repeats, {meta['date']}")
    print("| kind | what | seqgen_jax tok/s median (min–max) | PyTorch careful | PyTorch course | "
          "JAX ÷ careful | lead | JAX ÷ course |")
    print("|---|---|---|---|---|---|---|---|")
    g = lambda v: "-" if v is None else f"{v:.2f}"
    for r in out_rows:
        ld = {True: "yes", False: "no", None: "-"}[r["lead"]]
        print(f"| {r['kind']} | {r['what']} | {harness.fmt_stats(r['jax'])} | {harness.fmt_stats(r['torch_careful'])} | "
              f"{harness.fmt_stats(r['torch_course'])} | {g(r['ratio_careful'])} | {ld} | {g(r['ratio_course'])} |")
    if meta["geomean_ratio_careful"]:
        print(f"geometric mean JAX ÷ careful PyTorch (medians): {meta['geomean_ratio_careful']:.2f}; "
              f"leads that survive the spread: {sum(bool(r['lead']) for r in out_rows)} of {len(out_rows)} rows")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": out_rows}, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
