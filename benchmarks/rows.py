"""What the benchmarks time, built once for every script: a train step, an epoch and the sampler on
each side, each returned as a `harness.Variant` (run once, wait for the result)."""
from __future__ import annotations

import time

import numpy as np


# ---------------------------------------------------------------- JAX
def jax_precision(precision: str) -> None:
    """fp32: strict float32 matmuls; tf32 / bf16: JAX's TF32 for what stays float32 (bf16 models cast
    their matmul inputs themselves)."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest" if precision == "fp32" else "tensorfloat32")


def jax_train(e, h, V, B, T, *, backend="auto", precision="fp32", unroll=0, sharded=True, layers=1):
    """(variant, compile seconds) for one train step on a fixed (B, T) batch, as `seqgen train` runs it
    (`sharded`: over a mesh of every local device; else one bare jit on the default device)."""
    import jax

    from seqgen_jax.config import RunConfig
    from seqgen_jax.parallel import Placement
    from seqgen_jax.step import init_train_state, make_optimizer, step_fn

    cfg = RunConfig().override(**{"model.embed": e, "model.hidden": h, "model.vocab_size": V,
                                  "model.layers": layers, "model.backend": backend, "model.unroll": unroll,
                                  "model.precision": "bf16" if precision == "bf16" else "fp32"})
    tx = make_optimizer(cfg, 10_000)
    rng = np.random.default_rng(0)
    rows = rng.integers(4, V, size=(B + 1, T + 1)).astype(np.int32)
    rows[-1] = 0  # the all-padding row that fills batches up to a multiple of the devices
    if sharded:
        place = Placement.for_devices("all")
        state = {"s": place.put_state(init_train_state(cfg, tx))}
        step = place.train_step(cfg, tx)
        data, idx = place.put_rows(rows), place.put_idx(np.arange(B, dtype=np.int32), B)
    else:
        state = {"s": jax.device_put(init_train_state(cfg, tx))}
        step = jax.jit(step_fn(cfg, tx), donate_argnums=(0,))
        data, idx = jax.device_put(rows), jax.device_put(np.arange(B, dtype=np.int32))

    def run():
        state["s"], m = step(state["s"], data, idx)
        return m["loss"]

    t0 = time.perf_counter()
    jax.block_until_ready(run())
    return (run, jax.block_until_ready), time.perf_counter() - t0


def jax_sample(e, h, V, n, length, *, backend="auto"):
    import jax
    import jax.numpy as jnp

    from seqgen_jax.config import ModelConfig
    from seqgen_jax.model import init_params
    from seqgen_jax.sample import _sample, padded_n

    cfg = ModelConfig(vocab_size=V, embed=e, hidden=h, backend=backend)
    params = init_params(cfg, 0)
    prompt = jnp.asarray([1], jnp.int32)

    def run():
        return _sample(params, jax.random.key(0), jnp.float32(1.0), jnp.int32(0), prompt, cfg=cfg,
                       n=padded_n(n), max_len=length, early_exit=False)[0]

    return run, jax.block_until_ready


def jax_epoch(strings, e, h, budget, *, backend="auto", precision="fp32", epochs=2, max_buckets=12):
    """(epoch seconds, compile seconds, split, prep seconds).

    The split is bucketed and placed on the device once, as `seqgen train` does and as `torch_epoch`'s
    matrices are, and that preparation is timed apart (`prep`); each epoch's time holds the shuffle,
    the per-step index transfers and the steps."""
    import jax

    from seqgen_jax.buckets import BucketedSplit, epoch_order
    from seqgen_jax.config import RunConfig
    from seqgen_jax.data.vocab import Ragged, Vocab
    from seqgen_jax.parallel import Placement
    from seqgen_jax.step import init_train_state, make_optimizer

    vocab = Vocab.from_symbols("()")
    cfg = RunConfig().override(**{"model.embed": e, "model.hidden": h, "model.vocab_size": len(vocab),
                                  "model.backend": backend, "model.precision": "bf16" if precision == "bf16" else "fp32",
                                  "train.max_buckets": max_buckets})
    place = Placement.for_devices("all")
    tx = make_optimizer(cfg, 10_000)
    state = place.put_state(init_train_state(cfg, tx))
    step = place.train_step(cfg, tx)
    t = time.perf_counter()
    split = BucketedSplit.build(Ragged.from_strings(strings, vocab), budget, cfg.train.max_buckets, place)
    jax.block_until_ready(split.data)
    prep = time.perf_counter() - t
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        for b, idx in epoch_order(split.plan, 0, epoch):
            state, m = step(state, *split.batch(b, idx))
        jax.block_until_ready(state["params"])
        times.append(time.perf_counter() - t)
    return times, times[0] - min(times[1:]), split, prep


# ---------------------------------------------------------------- PyTorch
def torch_device(device: str):
    import torch

    return torch.device("cuda" if device == "gpu" else "cpu")


def torch_train(e, h, V, B, T, *, device="cpu", careful=True, bf16=False):
    import torch

    from baseline_torch import Trainer, sync

    dev = torch_device(device)
    tr = Trainer(V, e, h, dev, careful=careful, bf16=bf16)
    rows_np = np.random.default_rng(0).integers(4, V, size=(B, T + 1))
    if careful:
        rows = torch.as_tensor(rows_np, device=dev)
        return lambda: tr.step_careful(rows)[0], lambda _: sync(dev)
    seqs = rows_np.tolist()
    return lambda: tr.step_course(seqs), lambda _: sync(dev)


def torch_sample(e, h, V, n, length, *, device="cpu", careful=True):
    from baseline_torch import Trainer, sync

    dev = torch_device(device)
    tr = Trainer(V, e, h, dev, careful=careful)
    if careful:
        return lambda: tr.sample_carried(n, length), lambda _: sync(dev)
    return lambda: tr.sample_prefix_rerun(n, length), lambda _: sync(dev)


def torch_epoch(split, strings, e, h, *, device="cpu", careful=True, bf16=False, epochs=2):
    """Warm-epoch seconds of the same bucket plan and batch order as `jax_epoch`'s split."""
    import torch

    from baseline_torch import Trainer, sync
    from seqgen_jax.buckets import epoch_order

    dev = torch_device(device)
    tr = Trainer(6, e, h, dev, careful=careful, bf16=bf16)
    plan = split.plan
    if careful:  # pre-padded bucket matrices on the device, once
        mats = [torch.as_tensor(np.asarray(d), device=dev).long() for d in split.data]
    else:
        w2i = {"(": 4, ")": 5}
        enc = [[1] + [w2i[c] for c in s] + [2] for s in strings]
        members = [plan.members(b) for b in range(len(plan.buckets))]
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        for b, idx in epoch_order(plan, 0, epoch):
            if careful:
                tr.step_careful(mats[b][torch.as_tensor(idx, device=dev)])
            else:
                tr.step_course([enc[j] for j in (members[b][i] for i in idx if i < len(members[b]))])
        sync(dev)
        times.append(time.perf_counter() - t)
    return times
