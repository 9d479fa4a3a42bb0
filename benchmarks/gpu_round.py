"""One run that settles the GPU questions: every part in its own subprocess with its own time limit.

    python benchmarks/gpu_round.py --out DIR [--budget 540] [--parts env,train_tf32,...] [--smoke]

Writes one JSON line per measurement to DIR/gpu_round.jsonl as it goes (a part that times out or dies
loses only itself), DIR/PART.log with each part's output, DIR/gpu_round.json with everything at the end,
and prints one table last. Parts, most important first:

  env          GPU, driver, versions; which precision JAX's default fp32 matmul really uses (a
               300x300x1200 matmul against float64 under default / tensorfloat32 / highest / bf16)
  check        the Pallas kernels against the scan on this GPU (values and gradients, padded rows,
               fp32 at highest precision): the speed figures mean nothing if this fails
  train_tf32   train steps on the shape grid of throughput.py: careful PyTorch (cuDNN, TF32, fused Adam,
               time-major, cudnn.benchmark) interleaved with seqgen_jax scan (unroll 8 and 16) and
               cudnn, all TF32
  epoch        one epoch of 150,000 brackets strings at (300, 300), 60,000-token budget
  sample       1,000 x 200 tokens at (300, 300) and (32, 16)
  train_pallas the grid with the Pallas backend beside scan-u8 and careful PyTorch (its own part: the
               Triton compile time of the large tiles is the unknown)
  loop         microseconds per time step of the forward recurrence: XLA scan (unroll 1/8/16) against
               the in-kernel Pallas loop and cuDNN's forward
  train_bf16   the grid again with bf16 matmuls on both sides (PyTorch autocast)
  train_cmdbuf the scan rows under XLA command buffers (--xla_gpu_enable_command_buffer=+WHILE ...)
  loop_cmdbuf  the loop part under the same flags
  sharding     the sharded step on a 1-device mesh against a bare jit of the same step

`--smoke` runs every part on the CPU at tiny shapes in well under a minute each (part of the test
suite, so the script cannot rot between GPU runs); cuDNN rows are then recorded as skipped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CMDBUF_FLAGS = ("--xla_gpu_enable_command_buffer=+WHILE --xla_gpu_command_buffer_unroll_loops=true "
                "--xla_gpu_graph_min_graph_size=1")
# (name, seconds, extra XLA flags); the order is the priority when the budget runs short.
PARTS = [("env", 30, ""), ("check", 50, ""), ("train_tf32", 130, ""), ("epoch", 150, ""), ("sample", 45, ""),
         ("train_pallas", 100, ""), ("loop", 40, ""), ("train_bf16", 60, ""), ("train_cmdbuf", 45, CMDBUF_FLAGS),
         ("loop_cmdbuf", 30, CMDBUF_FLAGS), ("sharding", 25, "")]
GRID_MODELS = [(32, 16, 6), (300, 300, 6), (250, 250, 100)]
GRID_SHAPES = [(1000, 10), (250, 40), (50, 200), (6000, 10), (300, 200)]


# ---------------------------------------------------------------- inside a part
class Ctx:
    def __init__(self, out: Path, part: str, smoke: bool, deadline: float):
        self.out, self.part, self.smoke, self.deadline = out, part, smoke, deadline
        self.gpu = False

    def emit(self, **rec) -> None:
        rec = {"part": self.part, "t": round(time.time(), 1), **rec}
        with open(self.out / "gpu_round.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        print(json.dumps(rec), flush=True)

    def time_left(self) -> float:
        return self.deadline - time.time()


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def _grid(ctx):
    if ctx.smoke:
        return [(8, 8, 6)], [(16, 5)]
    return GRID_MODELS, GRID_SHAPES


def part_env(ctx: Ctx) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    devs = jax.devices()
    info = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": [d.device_kind for d in devs],
            "pallas_default_lowering": {True: "mosaic_gpu", False: "triton", None: "unknown"}[
                getattr(jax.config, "jax_pallas_use_mosaic_gpu", None)],
            "pallas_lowering_used": "triton (pallas.triton.CompilerParams)",
            "python": sys.version.split()[0], "date": datetime.date.today().isoformat()}
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except Exception:
        pass
    if _have_torch():
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except Exception as e:  # no GPU tools on a CPU machine
        info["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    ctx.emit(kind="env", **info)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 300)), rng.normal(size=(300, 1200))
    exact = a @ b
    for name in ("default", "tensorfloat32", "highest", "bf16"):
        x, y = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        if name == "bf16":
            got = jnp.dot(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
        elif name == "default":
            got = jnp.dot(x, y)
        else:
            got = jnp.dot(x, y, precision=name)
        err = float(np.max(np.abs(np.asarray(got, np.float64) - exact)) / np.max(np.abs(exact)))
        # Relative error classes: fp32 ~1e-7, tf32 (10-bit mantissa) ~1e-4..1e-3, bf16 (7-bit) ~1e-3..1e-2.
        cls = "fp32" if err < 1e-5 else "tf32" if err < 2e-3 else "bf16"
        ctx.emit(kind="matmul_precision", what=name, rel_err=err, behaves_like=cls)


def part_check(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from seqgen_jax.lstm import pallas as lp
    from seqgen_jax.lstm import scan as ls

    jax.config.update("jax_default_matmul_precision", "highest")
    # the widths `auto` runs on Pallas first; H = 300 last (its Triton compile took ~50 s on the H200)
    cases = [(5, 20, 8)] if ctx.smoke else [(12, 1000, 16), (40, 64, 64), (7, 33, 100), (20, 40, 300)]
    for T, B, H in cases:
        k = jax.random.split(jax.random.key(T), 5)
        gx = jax.random.normal(k[0], (T, B, 4 * H))
        w = jax.random.normal(k[1], (H, 4 * H)) / H ** 0.5
        h0 = 0.5 * jax.random.normal(k[2], (B, H))
        lens = jax.random.randint(k[3], (B,), 0, T + 1)
        wts = jax.random.normal(k[4], (T, B, H))

        def loss(rec):
            def f(gx, w, h0):
                hs, c = rec(gx, w, h0, h0, lens)
                return jnp.sum(hs * wts) + jnp.sum(c)
            return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

        (v1, g1), (v2, g2) = loss(lp.recurrence)(gx, w, h0), loss(ls.recurrence)(gx, w, h0)
        errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(g1, g2)]
        ok = abs(float(v1 - v2)) <= 1e-4 * abs(float(v2)) and max(errs) < 1e-4
        ctx.emit(kind="check", what=f"pallas vs scan T={T} B={B} H={H}", value_rel=abs(float(v1 - v2)) / abs(float(v2)),
                 grad_rel={"gx": errs[0], "w_hh": errs[1], "h0": errs[2]}, ok=bool(ok))


def _train_row(ctx, e, h, V, B, T, variants_spec, precision, torch_ok):
    """Interleave the given JAX variants with careful PyTorch on one shape; one record."""
    import harness
    import rows as R

    variants, compile_s, skipped = {}, {}, {}
    for name, kw in variants_spec:
        if kw.get("backend") == "cudnn" and not ctx.gpu:
            skipped[name] = "needs an NVIDIA GPU"
            continue
        if kw.get("backend") == "pallas" and ctx.smoke and ctx.part != "train_pallas":
            skipped[name] = "interpret mode on CPU: checked once, in train_pallas"
            continue
        try:
            v, c = R.jax_train(e, h, V, B, T, precision=precision, **kw)
            variants[name], compile_s[name] = v, round(c, 2)
        except Exception as ex:  # one variant failing (e.g. a Triton compile) loses only itself
            skipped[name] = f"{type(ex).__name__}: {str(ex)[:300]}"
    if torch_ok and precision == "bf16" and not ctx.gpu:
        skipped["torch_careful"] = "oneDNN's CPU LSTM has no bf16 autocast kernel"
    elif torch_ok:
        variants["torch_careful"] = R.torch_train(e, h, V, B, T, device="gpu" if ctx.gpu else "cpu",
                                                  bf16=precision == "bf16")
    stats = harness.interleaved(variants, work=B * T, repeats=3 if ctx.smoke else 5,
                                min_seconds=0.005 if ctx.smoke else 0.05)
    ref = stats.get("torch_careful")
    jax_names = [n for n in stats if n != "torch_careful"]
    ratios = {n: harness.ratio(stats[n], ref) for n in jax_names}
    best = max(jax_names, key=lambda n: stats[n]["median"]) if jax_names else None
    ctx.emit(kind="train", what=f"({e},{h}) V={V} {B}x{T}", precision=precision, stats=stats,
             us_per_step={n: 1e6 * B / s["median"] for n, s in stats.items()},
             ratio_vs_careful=ratios, lead={n: harness.lead(stats[n], ref) for n in jax_names},
             best_jax=best, best_ratio_vs_careful=ratios.get(best), compile_s=compile_s, skipped=skipped)


def _train_grid(ctx, variants_spec, precision):
    import rows as R

    R.jax_precision(precision)
    torch_ok = _have_torch()
    if torch_ok:
        from baseline_torch import set_precision

        set_precision(precision)
    models, shapes = _grid(ctx)
    for e, h, V in models:
        for B, T in shapes:
            if ctx.time_left() < 8:
                ctx.emit(kind="note", what=f"stopped before ({e},{h}) {B}x{T}: part budget spent")
                return
            _train_row(ctx, e, h, V, B, T, variants_spec, precision, torch_ok)


def part_train_tf32(ctx):
    _train_grid(ctx, [("scan-u8", {"backend": "scan", "unroll": 8}), ("scan-u16", {"backend": "scan", "unroll": 16}),
                      ("cudnn", {"backend": "cudnn"})], "tf32")


def part_train_pallas(ctx):
    _train_grid(ctx, [("pallas", {"backend": "pallas"}), ("scan-u8", {"backend": "scan", "unroll": 8})], "tf32")


def part_train_bf16(ctx):
    _train_grid(ctx, [("scan-u8", {"backend": "scan", "unroll": 8}), ("pallas", {"backend": "pallas"})], "bf16")


def part_train_cmdbuf(ctx):
    _train_grid(ctx, [("scan-u8+cmdbuf", {"backend": "scan", "unroll": 8}),
                      ("scan-u16+cmdbuf", {"backend": "scan", "unroll": 16})], "tf32")


def part_sharding(ctx):
    import harness
    import rows as R

    R.jax_precision("tf32")
    shapes = [(8, 8, 6, 20, 5)] if ctx.smoke else [(32, 16, 6, 1000, 10), (300, 300, 6, 300, 200), (250, 250, 100, 250, 40)]
    for e, h, V, B, T in shapes:
        sh, _ = R.jax_train(e, h, V, B, T, precision="tf32", sharded=True)
        bare, _ = R.jax_train(e, h, V, B, T, precision="tf32", sharded=False)
        st = harness.interleaved({"sharded": sh, "bare": bare}, work=B * T, repeats=3 if ctx.smoke else 7,
                                 min_seconds=0.005 if ctx.smoke else 0.05)
        ctx.emit(kind="sharding", what=f"({e},{h}) V={V} {B}x{T}", stats=st,
                 sharded_cost=1 - st["sharded"]["median"] / st["bare"]["median"])


def part_epoch(ctx):
    """Whole warm epochs of brackets on one bucket plan, seqgen_jax against careful PyTorch.

    (300, 300) first: the scan (its compile, ~58 s for 12 buckets on the H200, is the long pole);
    then (32, 16), where `auto` picks the Pallas kernel for buckets of >= 32 steps, beside the scan."""
    import harness
    import rows as R
    from seqgen_jax.data import Brackets

    R.jax_precision("tf32")
    n = 200 if ctx.smoke else 150_000
    strings = Brackets().strings(n, 0)
    epochs = 2 if ctx.smoke else 4
    shapes = [((8, 8), 1000, ("auto",))] if ctx.smoke else [((300, 300), 60_000, ("scan",)),
                                                                  ((32, 16), 10_000, ("auto", "scan"))]
    for (e, h), budget, backends in shapes:
        what = f"brackets {n} ({e},{h}) max {budget}"
        split = None
        for backend in backends:
            if ctx.time_left() < 20:
                ctx.emit(kind="note", what=f"stopped before {what} {backend}: part budget spent")
                return
            try:
                times, comp, split, prep = R.jax_epoch(strings, e, h, budget, backend=backend, precision="tf32",
                                                       epochs=epochs, max_buckets=3 if ctx.smoke else 12)
                ctx.emit(kind="epoch", what=what, variant=backend, seconds=harness.summary(times[1:]),
                         tokens=split.n_tokens, compile_s=comp, prep_s=prep)
            except Exception as ex:
                ctx.emit(kind="epoch", what=what, variant=backend, error=f"{type(ex).__name__}: {str(ex)[:300]}")
        if _have_torch() and split is not None:
            from baseline_torch import set_precision

            set_precision("tf32")
            tt = R.torch_epoch(split, strings, e, h, device="gpu" if ctx.gpu else "cpu", epochs=epochs)
            ctx.emit(kind="epoch", what=what, variant="torch_careful", seconds=harness.summary(tt[1:]),
                     tokens=split.n_tokens)


def part_sample(ctx):
    import harness
    import rows as R

    R.jax_precision("tf32")
    n, L = (16, 10) if ctx.smoke else (1000, 200)
    for e, h in ([(8, 8)] if ctx.smoke else [(300, 300), (32, 16)]):
        variants = {"scan": R.jax_sample(e, h, 6, n, L)}
        if not ctx.smoke:
            variants["pallas"] = R.jax_sample(e, h, 6, n, L, backend="pallas")
        if _have_torch():
            from baseline_torch import set_precision

            set_precision("tf32")
            variants["torch_careful"] = R.torch_sample(e, h, 6, n, L, device="gpu" if ctx.gpu else "cpu")
        st = harness.interleaved(variants, work=n * L, repeats=3 if ctx.smoke else 5,
                                 min_seconds=0.005 if ctx.smoke else 0.05)
        ref = st.get("torch_careful")
        ctx.emit(kind="sample", what=f"({e},{h}) {n}x{L}", stats=st,
                 ratio_vs_careful={k: harness.ratio(v, ref) for k, v in st.items() if k != "torch_careful"})


def part_loop(ctx):
    import harness
    import jax
    import jax.numpy as jnp

    from seqgen_jax.lstm import pallas as lp
    from seqgen_jax.lstm import scan as ls

    jax.config.update("jax_default_matmul_precision", "tensorfloat32")
    T = 8 if ctx.smoke else 200
    for B, H in ([(16, 8)] if ctx.smoke else [(1000, 16), (300, 300), (50, 250)]):
        k = jax.random.split(jax.random.key(0), 2)
        gx = jax.random.normal(k[0], (T, B, 4 * H))
        w = jax.random.normal(k[1], (H, 4 * H)) / H ** 0.5
        h0 = jnp.zeros((B, H))
        variants = {}
        for u in (1, 8, 16):
            f = jax.jit(lambda gx, w, h0, u=u: ls.recurrence(gx, w, h0, h0, unroll=u)[1])
            variants[f"scan-u{u}"] = (lambda f=f: f(gx, w, h0), jax.block_until_ready)
        fp = jax.jit(lambda gx, w, h0: lp.recurrence(gx, w, h0, h0)[1])
        variants["pallas"] = (lambda: fp(gx, w, h0), jax.block_until_ready)
        if ctx.gpu and _have_torch():
            import torch

            lstm = torch.nn.LSTM(H, H).cuda()
            xt = torch.randn(T, B, H, device="cuda")

            def tfwd():
                with torch.no_grad():
                    return lstm(xt)[1][1]

            variants["torch_cudnn_fwd"] = (tfwd, lambda _: torch.cuda.synchronize())
        st = harness.interleaved(variants, work=T, repeats=3 if ctx.smoke else 5,
                                 min_seconds=0.005 if ctx.smoke else 0.05)
        ctx.emit(kind="loop", what=f"B={B} H={H} T={T}", us_per_step={n: 1e6 / s["median"] for n, s in st.items()},
                 stats=st)


PART_FNS = {"env": part_env, "check": part_check, "train_tf32": part_train_tf32, "train_pallas": part_train_pallas, "train_bf16": part_train_bf16,
            "train_cmdbuf": part_train_cmdbuf, "loop": part_loop, "loop_cmdbuf": part_loop, "epoch": part_epoch,
            "sample": part_sample, "sharding": part_sharding}


def run_part(args) -> int:
    if args.smoke:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    ctx = Ctx(Path(args.out), args.part, args.smoke, time.time() + args.part_budget)
    ctx.gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    if not ctx.gpu and not args.smoke:
        ctx.emit(kind="error", error=f"no GPU: JAX's backend is {jax.default_backend()}; use --smoke on a CPU")
        return 2
    ctx.emit(kind="part_start", backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS", ""))
    if _have_torch():
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    try:
        PART_FNS[args.part](ctx)
    except Exception as ex:
        ctx.emit(kind="error", error=f"{type(ex).__name__}: {str(ex)[:500]}", traceback=traceback.format_exc()[-3000:])
        return 1
    return 0


# ---------------------------------------------------------------- the orchestrator
def table(records: list[dict]) -> str:
    import harness

    lines = ["| part | what | best seqgen_jax variant: tok/s median (min–max) | careful PyTorch | ratio | lead | "
             "µs/step (best JAX / PyTorch) |", "|---|---|---|---|---|---|---|"]
    for r in records:
        k = r.get("kind")
        if k in ("train", "sample"):
            st = r["stats"]
            ref = st.get("torch_careful")
            jax_names = [n for n in st if n != "torch_careful"]
            if not jax_names:
                continue
            best = max(jax_names, key=lambda n: st[n]["median"])
            us = r.get("us_per_step", {})
            us_txt = f"{us[best]:.1f} / {us['torch_careful']:.1f}" if best in us and "torch_careful" in us else "-"
            ratio = harness.ratio(st[best], ref)
            lines.append(f"| {r['part']} | {r['what']} | {best}: {harness.fmt_stats(st[best])} | "
                         f"{harness.fmt_stats(ref)} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                         f"{harness.lead(st[best], ref)} | {us_txt} |")
        elif k == "epoch" and "seconds" in r:
            s = r["seconds"]
            lines.append(f"| {r['part']} | {r['what']} {r['variant']} | {s['median']:.3f} s ({s['min']:.3f}–{s['max']:.3f}) "
                         f"| | | | |")
        elif k == "loop":
            us = ", ".join(f"{n} {v:.1f}" for n, v in r["us_per_step"].items())
            lines.append(f"| {r['part']} | {r['what']} | µs/step: {us} | | | | |")
        elif k == "sharding":
            lines.append(f"| {r['part']} | {r['what']} | sharded costs {100 * r['sharded_cost']:.1f}% | | | | |")
        elif k == "check":
            lines.append(f"| check | {r['what']} | {'ok' if r['ok'] else 'FAILED'}: grad rel "
                         f"{max(r['grad_rel'].values()):.1e} | | | | |")
        elif k == "matmul_precision":
            lines.append(f"| env | matmul {r['what']} | rel err {r['rel_err']:.1e} ({r['behaves_like']}) | | | | |")
        elif k in ("error", "part_status") and r.get("status", "error") != "ok":
            lines.append(f"| {r['part']} | {k} | {r.get('status', '')} {str(r.get('error', ''))[:120]} | | | | |")
    return "\n".join(lines)


def orchestrate(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_round.jsonl").unlink(missing_ok=True)
    wanted = args.parts.split(",") if args.parts else [p[0] for p in PARTS]
    unknown = set(wanted) - set(PART_FNS)
    if unknown:
        print(f"error: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PART_FNS)}", file=sys.stderr)
        return 2
    start = time.time()
    statuses = []
    for name, limit, flags in PARTS:
        if name not in wanted:
            continue
        left = args.budget - (time.time() - start)
        if left < 15:
            statuses.append({"part": name, "kind": "part_status", "status": "not run: budget spent"})
            continue
        limit = min(limit * (1.5 if args.smoke else 1.0), left)
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
        if args.smoke:  # one XLA:CPU device: each shape compiles once, not once per core
            env["SEQGEN_CPU_DEVICES"] = "1"
        if flags:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out),
               "--part-budget", str(max(5.0, limit - 10))] + (["--smoke"] if args.smoke else [])
        t0 = time.time()
        with open(out / f"{name}.log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=limit).returncode
                status = "ok" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired:
                status = f"timeout after {limit:.0f} s"
        statuses.append({"part": name, "kind": "part_status", "status": status, "seconds": round(time.time() - t0, 1)})
        print(f"part {name}: {status} in {time.time() - t0:.0f} s", flush=True)
    records = []
    if (out / "gpu_round.jsonl").exists():
        records = [json.loads(l) for l in (out / "gpu_round.jsonl").read_text().splitlines() if l.strip()]
    summary = {"date": datetime.date.today().isoformat(), "smoke": args.smoke, "wall_s": round(time.time() - start, 1),
               "parts": statuses, "records": records}
    tmp = out / "gpu_round.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "gpu_round.json")
    print()
    print(table(records + statuses))
    print(f"\ntotal {time.time() - start:.0f} s; JSON in {out / 'gpu_round.json'}")
    return 0 if all(s["status"] == "ok" for s in statuses) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_round.jsonl, gpu_round.json and the part logs")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all parts together")
    ap.add_argument("--parts", help="comma-separated subset, e.g. env,train_tf32")
    ap.add_argument("--smoke", action="store_true", help="every part on the CPU at tiny shapes (tests)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return run_part(args) if args.part else orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
