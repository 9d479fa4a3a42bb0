"""Throughput of seqgen_jax against the strongest PyTorch a careful user runs, shape by shape.

    python benchmarks/throughput.py [--quick] [--device cpu|gpu] [--precision fp32|tf32|bf16] [--json OUT]

Rows: train steps (forward + backward + clip + Adam) at fixed shapes; one epoch of brackets strings
end to end with each seqgen_jax feed (bucket, packed; the feed's matrices built and every shape
compiled ahead, both timed apart); sampling n x 200 tokens. PyTorch variants (benchmarks/
baseline_torch.py): careful (eager, pre-padded, fused Adam), folded (careful + the same embedding fold
seqgen_jax uses), compiled (folded + torch.compile; CUDA graphs on a GPU) and the course's code. Every
row runs all variants interleaved over `--repeats` rounds (`harness.interleaved`) and reports median
and min-max; `ratio_best` divides seqgen_jax's median by the best PyTorch variant's (`best_torch`),
and a lead is claimed only where seqgen_jax's slowest repeat beats that variant's fastest. Ablations:
`jax_nofold` (train rows: seqgen_jax with the fold off). The table is printed last and written as
JSON with the device, versions, date, precision and command."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import rows as R  # noqa: E402

SHAPES = [(1000, 10), (250, 40), (50, 200), (6000, 10), (300, 200)]
MODELS = [(32, 16, 6), (300, 300, 6), (250, 250, 100)]
TORCH = ("torch_careful", "torch_folded", "torch_compiled")  # the variants `best_torch` is chosen from


def best_of(stats: dict) -> tuple[str | None, dict | None]:
    have = [(k, stats[k]) for k in TORCH if stats.get(k)]
    if not have:
        return None, None
    return max(have, key=lambda kv: kv[1]["median"])


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        return ""


def child_env(layout: str) -> dict:
    """The environment of a child that times `layout`: "per_core" or "per_core_kept" (the same devices,
    freed host memory kept, as `seqgen train` runs large steps: `_devices.prepare_for_step`). This
    process imported seqgen_jax, which put its own device count into XLA_FLAGS; the child strips what a
    seqgen parent added (SEQGEN_ADDED_XLA_FLAGS) and chooses its own. Until 2026-12-07 it inherited the
    count and the rows labelled one-device ran on the per-core devices (NOTES, attempt 36)."""
    env = dict(os.environ)
    env.pop("SEQGEN_CPU_DEVICES", None)
    env.pop("SEQGEN_HOST_MALLOC", None)
    if layout == "per_core_kept":
        env["SEQGEN_HOST_MALLOC"] = "keep"
    return env


def by_layout(args, argv) -> None:
    """On a CPU, each width is timed in the layout `seqgen train` gives it (one device per core, freed
    host memory kept for large steps; seqgen_jax/_devices.py): one child process per layout, their rows
    merged into one table."""
    import tempfile

    from seqgen_jax._devices import default_count, keeps_host_memory_for

    widths = sorted({(e, h) for e, h, _ in (MODELS if not args.quick else [(32, 16, 6), (300, 300, 6)])})
    kept = {w: keeps_host_memory_for(w[1], 1, 10_000, default_count()) for w in widths}  # the rows' 10,000-token steps
    groups = {"per_core": [w for w in widths if not kept[w]], "per_core_kept": [w for w in widths if kept[w]]}
    rows, meta = [], None
    base = list(argv if argv is not None else sys.argv[1:])
    child_args, skip = [], False
    for a in base:  # each child writes its own JSON
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            child_args.append(a)
    for layout, ws in groups.items():
        if not ws:
            continue
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "part.json"
            env = child_env(layout)
            print(f"-- {layout}: {', '.join(f'({e},{h})' for e, h in ws)}", flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_args, "--json", str(out),
                            "--models", ",".join(f"{e}x{h}" for e, h in ws)], env=env, check=True)
            part = json.loads(out.read_text())
        for r in part["rows"]:
            r["layout"] = layout
        rows += part["rows"]
        meta = meta or part["meta"]
    meta["layouts"] = {k: [f"({e},{h})" for e, h in v] for k, v in groups.items()}
    meta["command"] = "python benchmarks/throughput.py " + " ".join(base)
    ratios = [r["ratio_best"] for r in rows if r.get("ratio_best")]
    train_ratios = [r["ratio_best"] for r in rows if r.get("ratio_best") and r["kind"] == "train"]
    meta["geomean_ratio_best"] = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    meta["geomean_ratio_best_train"] = float(np.exp(np.mean(np.log(train_ratios)))) if train_ratios else None
    print_table(meta, rows)
    write(args.json, meta, rows)


def print_table(meta: dict, out_rows: list) -> None:
    print()
    print(f"device {meta['device']} ({meta['backend']}), jax {meta['jax']}, torch {meta.get('torch', '-')}, "
          f"precision {meta['precision']}, {meta['repeats']} interleaved repeats, {meta['date']}, commit {meta['commit']}")
    print("| kind | what | seqgen_jax tok/s median (min–max) | best PyTorch (variant) | ÷ best | lead | "
          "PyTorch careful | ÷ careful | fold off |")
    print("|---|---|---|---|---|---|---|---|---|")
    g = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in out_rows:
        ld = {True: "yes", False: "no", None: "-"}[r["lead"]]
        b = r.get("best_torch")
        print(f"| {r['kind']} | {r['what']} | {harness.fmt_stats(r.get('jax'))} | "
              f"{harness.fmt_stats(r.get(b) if b else None)} ({b or '-'}) | {g(r['ratio_best'])} | {ld} | "
              f"{harness.fmt_stats(r.get('torch_careful'))} | {g(r['ratio_careful'])} | "
              f"{harness.fmt_stats(r.get('jax_nofold'))} |")
    if meta["geomean_ratio_best"]:
        print(f"geometric mean seqgen_jax ÷ best PyTorch (medians): all rows {meta['geomean_ratio_best']:.2f}, "
              f"train rows {g(meta['geomean_ratio_best_train'])}; leads beyond the spread: "
              f"{sum(bool(r['lead']) for r in out_rows)} of {len(out_rows)} rows")


def write(path: str, meta: dict, out_rows: list) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": out_rows}, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15,000-string epochs, two models and shorter "
                    "prefix-re-run sampling: fits about 15 minutes on 2 CPU cores")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                    help="fp32: strict float32 on both sides; tf32: both frameworks' TF32 (GPU); bf16: bf16 "
                         "matmuls (JAX --precision bf16, PyTorch autocast)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per row (>= 5 for a claim)")
    ap.add_argument("--json", default="benchmarks/results/throughput.json")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--only", choices=("train", "epoch", "sample"), action="append",
                    help="run only these kinds of rows (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, to check the harness itself (tests)")
    ap.add_argument("--models", help=argparse.SUPPRESS)  # a child's share of the rows: ExH[,...]
    args = ap.parse_args(argv)
    if args.device == "cpu" and not args.smoke and args.models is None:
        return by_layout(args, argv)
    models, shapes, epoch_size, sample_ns, sample_len = MODELS, SHAPES, (300, 300), (1000, 10), 200
    if args.quick:
        models = [(32, 16, 6), (300, 300, 6)]
    if args.smoke:
        models, shapes, epoch_size, sample_ns, sample_len = [(8, 8, 6)], [(20, 5)], (8, 8), (10,), 20
    keep = None
    if args.models is not None:  # a child process: only these widths (the layout is its parent's choice)
        keep = {tuple(int(x) for x in m.split("x")) for m in args.models.split(",") if m}
        models = [m for m in models if (m[0], m[1]) in keep]
        epoch_size = epoch_size if epoch_size in keep else None
    kinds = set(args.only or ("train", "epoch", "sample"))
    if args.smoke:
        harness.SETTLE_SECONDS = 0.0  # the harness, not the machine, is under test
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    R.jax_precision(args.precision)
    have_torch = not args.no_torch
    compile_note = None
    if have_torch:
        try:
            import torch

            from baseline_torch import set_precision

            set_precision(args.precision)
            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            print("PyTorch is not installed (pip install -e '.[torch]'): JAX rows only", file=sys.stderr)
            have_torch = False
    compiled_ok = have_torch and not args.no_compile and not args.smoke
    if have_torch and not compiled_ok:
        compile_note = "not run (--no-compile or --smoke)"
    bf16 = args.precision == "bf16"
    rep = max(1, args.repeats)
    min_s = 0.01 if args.smoke else 0.05
    out_rows = []

    def add(kind, what, stats, **extra):
        best, b = best_of(stats)
        j, c, k = stats.get("jax"), stats.get("torch_careful"), stats.get("torch_course")
        r = {"kind": kind, "what": what, "repeats": rep, **stats, "best_torch": best,
             "ratio_best": harness.ratio(j, b), "lead": harness.lead(j, b),
             "ratio_careful": harness.ratio(j, c), "ratio_course": harness.ratio(j, k), **extra}
        if compile_note and "torch_compiled" not in stats:
            r["torch_compiled_note"] = compile_note
        out_rows.append(r)
        print(f"{kind:6} {what:44} jax {harness.fmt_stats(j):>26}  best torch ({best}) {harness.fmt_stats(b):>26}  "
              f"÷ {r['ratio_best'] or 0:.2f}  lead {r['lead']}", flush=True)
        return r

    def torch_variants(make, **kw):
        """{name: variant} for the careful, folded and compiled PyTorch, compile time reported apart."""
        out, comp = {}, {}
        if not have_torch:
            return out, comp
        out["torch_careful"] = make(careful=True, **kw)
        out["torch_folded"] = make(careful=True, folded=True, **kw)
        if compiled_ok:
            nonlocal compile_note
            try:
                out["torch_compiled"], comp["torch_compile_s"] = R.first_call_timed(
                    make(careful=True, folded=True, compiled=True, **kw))
            except Exception as e:  # noqa: BLE001  the row says why instead of failing the run
                compile_note = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return out, comp

    if "train" in kinds:
        for e, h, V in models:
            for B, T in shapes:
                jv, comp = R.jax_train(e, h, V, B, T, precision=args.precision)
                variants = {"jax": jv}
                if not args.smoke:
                    variants["jax_nofold"] = R.jax_train(e, h, V, B, T, precision=args.precision, fold=False)[0]
                tv, tcomp = torch_variants(lambda **kw: R.torch_train(e, h, V, B, T, device=args.device, bf16=bf16,
                                                                      **kw))
                variants.update(tv)
                if have_torch and not bf16:
                    variants["torch_course"] = R.torch_train(e, h, V, B, T, device=args.device, careful=False)
                add("train", f"({e},{h}) V={V} {B}x{T}", harness.interleaved(variants, work=B * T, repeats=rep,
                                                                            min_seconds=min_s), compile_s=comp, **tcomp)

    if "epoch" in kinds and epoch_size is not None:
        from seqgen_jax.data import Brackets

        n_str = 300 if args.smoke else 15_000 if args.quick else 150_000
        strings = Brackets().strings(n_str, 0)
        ee, eh = epoch_size
        for budget in (10_000, 60_000):
            variants, extra = {}, {"compile_s": {}, "prep_s": {}}
            tokens = None
            for feed in ("bucket", "packed"):
                v, comp, prep, tokens = R.jax_epoch(strings, ee, eh, budget, feed=feed, precision=args.precision,
                                                    max_buckets=3 if args.smoke else 12)
                variants[f"jax_{feed}"] = v
                extra["compile_s"][feed], extra["prep_s"][feed] = round(comp, 3), round(prep, 3)
            split = R.bucket_split(strings, budget, 3 if args.smoke else 12)
            tv, tcomp = torch_variants(lambda **kw: R.torch_epoch(split, strings, ee, eh, device=args.device,
                                                                  bf16=bf16, **kw))
            variants.update(tv)
            if have_torch and not bf16 and not args.quick:
                variants["torch_course"] = R.torch_epoch(split, strings, ee, eh, device=args.device, careful=False)
            stats = harness.interleaved(variants, work=tokens, repeats=rep, min_seconds=0.0)
            # One row per feed, from the same interleaved rounds (the PyTorch figures are shared).
            for feed in ("bucket", "packed"):
                add("epoch", f"brackets {n_str} ({ee},{eh}) max {budget} {feed}", {**stats, "jax": stats[f"jax_{feed}"]},
                    feed=feed, tokens=tokens, packed_over_bucket=harness.ratio(stats["jax_packed"], stats["jax_bucket"]),
                    compile_s=extra["compile_s"][feed], prep_s=extra["prep_s"][feed], **tcomp)

    if "sample" in kinds:
        course_len = sample_len // 4 if (args.quick or args.smoke) else sample_len
        sample_models = [(8, 8, 6)] if args.smoke else [(300, 300, 6), (32, 16, 6)]
        if keep is not None:
            sample_models = [m for m in sample_models if (m[0], m[1]) in keep]
        for n in sample_ns:
            for e, h, V in sample_models:
                variants = {"jax": R.jax_sample(e, h, V, n, sample_len)}
                tv, tcomp = torch_variants(lambda **kw: R.torch_sample(e, h, V, n, sample_len, device=args.device,
                                                                       **kw))
                variants.update(tv)
                work = {k: n * sample_len for k in variants}
                if have_torch:  # the course's re-run loop, interleaved too, over fewer steps (it is slow)
                    variants["torch_course"] = R.torch_sample(e, h, V, n, course_len, device=args.device, careful=False)
                    work["torch_course"] = n * course_len
                stats = harness.interleaved(variants, work=work, repeats=rep, min_seconds=min_s)
                add("sample", f"({e},{h}) {n}x{sample_len} (re-run {n}x{course_len})", stats, **tcomp)

    ratios = [r["ratio_best"] for r in out_rows if r["ratio_best"]]
    train_ratios = [r["ratio_best"] for r in out_rows if r["ratio_best"] and r["kind"] == "train"]
    dev = jax.devices()[0]
    meta = {"date": datetime.date.today().isoformat(), "device": getattr(dev, "device_kind", str(dev)),
            "backend": jax.default_backend(), "jax": jax.__version__, "precision": args.precision,
            "quick": args.quick, "smoke": args.smoke, "repeats": rep, "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": commit(), "torch_compiled": compile_note or "run"}
    if have_torch:
        import torch

        meta["torch"] = torch.__version__
    geo = lambda xs: float(np.exp(np.mean(np.log(xs)))) if xs else None  # noqa: E731
    meta["geomean_ratio_best"] = geo(ratios)
    meta["geomean_ratio_best_train"] = geo(train_ratios)
    print_table(meta, out_rows)
    write(args.json, meta, out_rows)


if __name__ == "__main__":
    main()
