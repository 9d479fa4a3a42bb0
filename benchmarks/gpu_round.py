"""One run that settles the GPU questions: every part in its own subprocess with its own time limit.

    python benchmarks/gpu_round.py --out DIR [--budget 540] [--parts env,train_tf32,...] [--smoke]

Writes one JSON line per measurement to DIR/gpu_round.jsonl as it goes (a part that times out or dies
loses only itself), DIR/PART.log with each part's output, DIR/gpu_round.json with everything at the end,
and prints one table last. Parts, most important first:

  env          GPU, driver, versions; which precision JAX's default fp32 matmul really uses (a
               300x300x1200 matmul against float64 under default / tensorfloat32 / highest / bf16)
  check        the Pallas kernels against the scan on this GPU (values and gradients, padded rows,
               fp32 at highest precision): the speed figures mean nothing if this fails
  epoch        whole epochs of 150,000 brackets strings at (300, 300) and (32, 16): seqgen_jax's bucket
               and packed feeds (every shape compiled ahead, `compile_s` apart) interleaved with
               careful, folded and compiled (CUDA graphs) PyTorch, a (300, 300) train step repeated
               as the reference row that shows drift between parts
  sweep        64 members of the NDFA preset as one vmapped program against one member alone
               (member-tokens/s), the reference row again
  quality_text seqgen train text:<tiny shakespeare> --max-time 3m with the GPU settings, then eval
               (val nats/char in nanoGPT's 64-char windows): the 1.47 target
  quality_imdb seqgen train imdb with the GPU settings cut to 4 minutes, scored on 2,000 random
               stratified test reviews: the 1.60 bits/char target
  sharding     the sharded step on a 1-device mesh against a bare jit of the same step
  train_tf32   train steps on the shape grid of throughput.py: careful, folded and compiled PyTorch
               (cuDNN, TF32, fused Adam, time-major, cudnn.benchmark) interleaved with seqgen_jax scan
               (unroll 8 and 16) and cudnn, all TF32
  sample       1,000 x 200 tokens at (300, 300) and (32, 16)
  train_pallas the grid with the Pallas backend beside scan-u8 and careful PyTorch (its own part: the
               Triton compile time of the large tiles is the unknown)
  loop         microseconds per time step of the forward recurrence: XLA scan (unroll 1/8/16) against
               the in-kernel Pallas loop and cuDNN's forward
  train_bf16   the grid again with bf16 matmuls on both sides (PyTorch autocast)
  train_cmdbuf the scan rows under XLA command buffers (--xla_gpu_enable_command_buffer=+WHILE ...)
  loop_cmdbuf  the loop part under the same flags

`--smoke` runs every part on the CPU at tiny shapes, all in one process (part of the test suite, so
the script cannot rot between GPU runs); cuDNN rows are then recorded as skipped.
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
PARTS = [("env", 25, ""), ("check", 40, ""), ("epoch", 150, ""), ("sweep", 80, ""), ("quality_text", 230, ""),
         ("quality_imdb", 330, ""), ("sharding", 25, ""), ("train_tf32", 130, ""), ("sample", 45, ""),
         ("train_pallas", 100, ""), ("loop", 40, ""), ("train_bf16", 60, ""), ("train_cmdbuf", 45, CMDBUF_FLAGS),
         ("loop_cmdbuf", 30, CMDBUF_FLAGS)]
# What `quality_*` train with on a GPU (the settings those runs measure; presets.py keeps the CPU ones).
GPU_TEXT = ["--embed", "128", "--hidden", "1024", "--max-tokens", "16384", "--chunk", "128", "--lr", "0.003",
            "--split", "0.9,0.1,0", "--max-time", "3m", "--epochs", "100", "--no-carry-state"]
GPU_IMDB = ["--embed", "128", "--hidden", "1024", "--max-tokens", "16384", "--chunk", "128", "--lr", "0.003",
            "--max-time", "4m", "--epochs", "20", "--n-train", "25000"]
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
        dev = "gpu" if ctx.gpu else "cpu"
        variants["torch_careful"] = R.torch_train(e, h, V, B, T, device=dev, bf16=precision == "bf16")
        variants["torch_folded"] = R.torch_train(e, h, V, B, T, device=dev, bf16=precision == "bf16", folded=True)
        if not ctx.smoke:
            try:
                variants["torch_compiled"], compile_s["torch_compiled"] = R.first_call_timed(
                    R.torch_train(e, h, V, B, T, device=dev, bf16=precision == "bf16", folded=True, compiled=True))
            except Exception as ex:  # noqa: BLE001
                skipped["torch_compiled"] = f"{type(ex).__name__}: {str(ex)[:200]}"
    stats = harness.interleaved(variants, work=B * T, repeats=3 if ctx.smoke else 5,
                                min_seconds=0.005 if ctx.smoke else 0.05)
    torch_names = [n for n in stats if n.startswith("torch")]
    ref = max((stats[n] for n in torch_names), key=lambda x: x["median"]) if torch_names else None
    jax_names = [n for n in stats if not n.startswith("torch")]
    ratios = {n: harness.ratio(stats[n], ref) for n in jax_names}
    best = max(jax_names, key=lambda n: stats[n]["median"]) if jax_names else None
    best_torch = max(torch_names, key=lambda n: stats[n]["median"]) if torch_names else None
    ctx.emit(kind="train", what=f"({e},{h}) V={V} {B}x{T}", precision=precision, stats=stats,
             us_per_step={n: 1e6 * B / s["median"] for n, s in stats.items()},
             ratio_vs_best_torch=ratios, best_torch=best_torch, lead={n: harness.lead(stats[n], ref) for n in jax_names},
             best_jax=best, best_ratio=ratios.get(best),
             ratio_vs_careful={n: harness.ratio(stats[n], stats.get("torch_careful")) for n in jax_names},
             compile_s=compile_s, skipped=skipped)


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


def _reference(ctx, tag: str) -> None:
    """The same (300, 300) 250 x 40 train step in every timing part: drift between parts shows here."""
    import harness
    import rows as R

    shape = (8, 8, 6, 20, 5) if ctx.smoke else (300, 300, 6, 250, 40)
    v, _ = R.jax_train(*shape, precision="tf32")
    st = harness.interleaved({"jax": v}, work=shape[3] * shape[4], repeats=3, min_seconds=0.005 if ctx.smoke else 0.05)
    ctx.emit(kind="reference", what=f"({shape[0]},{shape[1]}) {shape[3]}x{shape[4]} train step ({tag})", stats=st)


def part_epoch(ctx):
    """Whole warm epochs of brackets, every seqgen_jax feed against careful, folded and compiled
    PyTorch on the bucket plan, interleaved epoch by epoch; compile and preparation timed apart."""
    import harness
    import rows as R
    from seqgen_jax.data import Brackets

    R.jax_precision("tf32")
    _reference(ctx, "epoch part")
    n = 300 if ctx.smoke else 150_000
    strings = Brackets().strings(n, 0)
    shapes = [((8, 8), 1000)] if ctx.smoke else [((300, 300), 10_000), ((32, 16), 10_000)]
    dev = "gpu" if ctx.gpu else "cpu"
    for (e, h), budget in shapes:
        what = f"brackets {n} ({e},{h}) max {budget}"
        if ctx.time_left() < 30:
            ctx.emit(kind="note", what=f"stopped before {what}: part budget spent")
            return
        variants, comp, prep, skipped = {}, {}, {}, {}
        tokens = None
        for feed in ("bucket", "packed"):
            try:
                v, comp[feed], prep[feed], tokens = R.jax_epoch(strings, e, h, budget, feed=feed, precision="tf32",
                                                               max_buckets=3 if ctx.smoke else 12)
                variants[f"jax_{feed}"] = v
            except Exception as ex:  # noqa: BLE001  one feed failing loses only itself
                skipped[feed] = f"{type(ex).__name__}: {str(ex)[:300]}"
        if _have_torch():
            from baseline_torch import set_precision

            set_precision("tf32")
            split = R.bucket_split(strings, budget, 3 if ctx.smoke else 12)
            variants["torch_careful"] = R.torch_epoch(split, strings, e, h, device=dev)
            variants["torch_folded"] = R.torch_epoch(split, strings, e, h, device=dev, folded=True)
            if not ctx.smoke:
                try:
                    variants["torch_compiled"], comp["torch_compiled"] = R.first_call_timed(
                        R.torch_epoch(split, strings, e, h, device=dev, folded=True, compiled=True))
                except Exception as ex:  # noqa: BLE001
                    skipped["torch_compiled"] = f"{type(ex).__name__}: {str(ex)[:200]}"
        st = harness.interleaved(variants, work=tokens, repeats=2 if ctx.smoke else 4, min_seconds=0.0)
        ctx.emit(kind="epoch", what=what, stats=st, tokens=tokens, compile_s=comp, prep_s=prep, skipped=skipped,
                 seconds={k: tokens / v["median"] for k, v in st.items()})


def part_sweep(ctx):
    """64 members of the NDFA preset as one vmapped program against one member alone: a whole epoch
    each, member-tokens per second."""
    import harness
    import jax

    import seqgen_jax as sg
    from seqgen_jax.data import build_dataset
    from seqgen_jax.parallel import Placement
    from seqgen_jax.step import make_optimizer
    from seqgen_jax.train import Member, make_feed, new_state
    from seqgen_jax.run import RunDir

    _reference(ctx, "sweep part")
    M = 4 if ctx.smoke else 64
    cfg = sg.config("ndfa", **{"data.n_train": 500 if ctx.smoke else 20_000, "data.n_val": 50, "data.n_test": 50})
    ds = build_dataset(cfg.data)
    cfg = cfg.override(**{"model.vocab_size": len(ds.vocab)})
    place = Placement()
    variants, tokens = {}, None
    for m in (1, M):
        members = [Member(cfg.override(**{"train.seed": i}), RunDir(f"/tmp/unused{i}")) for i in range(m)]
        feed = make_feed(cfg, ds, place, seeds=[x.cfg.train.seed for x in members] if m > 1 else None)
        tx = make_optimizer(cfg, 10_000)
        holder = {"s": new_state(cfg, tx, feed, 10_000, place, members)}
        runner = place.block_runner(cfg, tx, feed.spec, members=m, data_per_member=m > 1)
        runner.compile(feed.examples(holder["s"]))
        blocks = list(feed.blocks(0))

        def run(runner=runner, blocks=blocks, holder=holder):
            st = holder["s"]
            for b in blocks:
                st, _ = runner(st, b.data, b.xs, b.live)
            holder["s"] = st
            return st["params"]

        variants[f"members_{m}"] = (run, jax.block_until_ready)
        tokens = feed.tokens_per_epoch
    st = harness.interleaved(variants, work=tokens, repeats=2 if ctx.smoke else 4, min_seconds=0.0)
    st[f"members_{M}"] = {k: (v * M if k != "repeats" else v) for k, v in st[f"members_{M}"].items()}
    ctx.emit(kind="sweep", what=f"ndfa preset: {M} members as one program against one", stats=st,
             ratio=harness.ratio(st[f"members_{M}"], st["members_1"]), members=M,
             note="member-tokens/s; the ratio is the sweep's throughput over one member's")


def _cli(args: list[str], timeout: float, in_process: bool = False) -> tuple[int, str, str]:
    """`seqgen ARGS` in a process of its own (a GPU round's training must not share this one's
    memory), or in this process for the smoke, where a second JAX start-up proves nothing."""
    if in_process:
        import contextlib
        import io

        from seqgen_jax import cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(args)
        return rc, out.getvalue(), err.getvalue()
    p = subprocess.run([sys.executable, "-m", "seqgen_jax", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=HERE.parent)
    return p.returncode, p.stdout, p.stderr


def part_quality_text(ctx):
    """Tiny Shakespeare with the GPU settings for 3 minutes, then nanoGPT's val protocol."""
    text = HERE.parent.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if not text.exists():
        ctx.emit(kind="error", error=f"{text} is missing")
        return
    run = Path(ctx.out) / "quality_text"
    flags = GPU_TEXT if not ctx.smoke else ["--embed", "8", "--hidden", "16", "--max-tokens", "512", "--chunk", "16",
                                            "--split", "0.1,0.02,0.88", "--max-time", "5s", "--epochs", "1"]
    t0 = time.time()
    rc, out, err = _cli(["train", f"text:{text}", "--run-dir", str(run), *flags], ctx.time_left() - 30, ctx.smoke)
    train_s = time.time() - t0
    if rc:
        ctx.emit(kind="quality", what="tiny shakespeare", error=err.strip().splitlines()[-1] if err else str(rc))
        return
    rc, out, err = _cli(["eval", str(run), "--split", "val", "--json", "--samples", "5", "--max-len", "50",
                         "--temperatures", "0.8"], max(ctx.time_left() - 5, 10), ctx.smoke)
    ev = json.loads(out) if rc == 0 else {}
    ctx.emit(kind="quality", what="tiny shakespeare val nats/char (64-char windows)", train_s=round(train_s, 1),
             flags=flags, val_nats_window64=ev.get("nats_per_char_window64"), val_nats_stream=ev.get("nats_per_char"),
             target=1.47, error=None if rc == 0 else err[-300:])


def part_quality_imdb(ctx):
    """IMDb characters with the GPU settings for 4 minutes, scored on 2,000 random stratified test reviews."""
    arch = os.environ.get("SEQGEN_IMDB") or str(HERE.parent.parent / "shared" / "data" / "aclImdb_v1.tar.gz")
    if ctx.smoke or not Path(arch).exists():
        ctx.emit(kind="note", what=f"quality_imdb skipped ({'smoke' if ctx.smoke else arch + ' missing'})")
        return
    run = Path(ctx.out) / "quality_imdb"
    t0 = time.time()
    rc, out, err = _cli(["train", "imdb", "--imdb", arch, "--run-dir", str(run), *GPU_IMDB], ctx.time_left() - 60)
    train_s = time.time() - t0
    rc2, out2, err2 = _cli(["eval", str(run), "--split", "test", "--json", "--limit", "2000", "--samples", "20",
                            "--max-len", "200", "--temperatures", "0.8"], max(ctx.time_left() - 5, 10))
    ev = json.loads(out2) if rc2 == 0 else {}
    curve = []
    mpath = run / "metrics.jsonl"
    if mpath.exists():
        curve = [{k: r.get(k) for k in ("epoch", "step", "elapsed", "val_ce_bits_per_token")}
                 for r in map(json.loads, mpath.read_text().splitlines()) if "epoch" in r]
    ctx.emit(kind="quality", what="imdb test bits/char (2,000 random stratified reviews)", train_s=round(train_s, 1),
             flags=GPU_IMDB, test_bits_per_char=ev.get("bits_per_char"), target=1.60, curve=curve,
             error=None if rc == 0 and rc2 == 0 else (err or err2)[-300:])


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
            "sample": part_sample, "sharding": part_sharding, "sweep": part_sweep, "quality_text": part_quality_text,
            "quality_imdb": part_quality_imdb}


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
        elif k == "epoch" and "stats" in r:
            st = r["stats"]
            torch = [n for n in st if n.startswith("torch")]
            ref = max(torch, key=lambda n: st[n]["median"]) if torch else None
            for n in [n for n in st if n.startswith("jax")]:
                ratio = harness.ratio(st[n], st[ref]) if ref else None
                lines.append(f"| epoch | {r['what']} {n} ({r['seconds'][n]:.3f} s, compile {r['compile_s'].get(n[4:], '-')} s) | "
                             f"{harness.fmt_stats(st[n])} | {ref}: {harness.fmt_stats(st[ref]) if ref else '-'} | "
                             f"{'-' if ratio is None else f'{ratio:.2f}'} | {harness.lead(st[n], st[ref]) if ref else '-'} | |")
        elif k in ("sweep", "reference"):
            extra = f"ratio {r['ratio']:.1f}x" if k == "sweep" and r.get("ratio") else ""
            cells = ", ".join(f"{n} {harness.fmt_stats(v)}" for n, v in r["stats"].items())
            lines.append(f"| {r['part']} | {r['what']} | {cells} | | {extra} | | |")
        elif k == "quality":
            fig = r.get("val_nats_window64", r.get("test_bits_per_char"))
            lines.append(f"| {r['part']} | {r['what']} | {fig} (target {r.get('target')}) after {r.get('train_s')} s "
                         f"{r.get('error') or ''} | | | | |")
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
    if args.smoke:  # every part in this process on the CPU: one JAX start-up, one device
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ["SEQGEN_CPU_DEVICES"] = "1"
        import harness

        harness.SETTLE_SECONDS = 0.0
        import jax

        for name, limit, _ in PARTS:
            if name not in wanted:
                continue
            ctx = Ctx(out, name, True, time.time() + limit)
            ctx.gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
            t0 = time.time()
            try:
                PART_FNS[name](ctx)
                status = "ok"
            except Exception as ex:  # noqa: BLE001  the table says which part failed and why
                ctx.emit(kind="error", error=f"{type(ex).__name__}: {str(ex)[:500]}",
                         traceback=traceback.format_exc()[-3000:])
                status = "error"
            statuses.append({"part": name, "kind": "part_status", "status": status, "seconds": round(time.time() - t0, 1)})
            print(f"part {name}: {status} in {time.time() - t0:.0f} s", flush=True)
    for name, limit, flags in [] if args.smoke else PARTS:
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
