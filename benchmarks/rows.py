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


def jax_train(e, h, V, B, T, *, backend="auto", precision="fp32", unroll=0, sharded=True, layers=1, fold=True):
    """(variant, compile seconds) for one train step on a fixed (B, T) batch, as `seqgen train` runs it
    (`sharded`: over a mesh of every local device; else one bare jit on the default device)."""
    import jax

    from seqgen_jax.config import RunConfig
    from seqgen_jax.parallel import Placement
    from seqgen_jax.step import init_train_state, make_optimizer, step_fn

    cfg = RunConfig().override(**{"model.embed": e, "model.hidden": h, "model.vocab_size": V,
                                  "model.layers": layers, "model.backend": backend, "model.unroll": unroll,
                                  "model.fold": fold,
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


def epoch_dataset(strings):
    """A brackets Dataset of `strings` for the epoch rows (validation and test unused)."""
    from seqgen_jax.data import Brackets, Dataset
    from seqgen_jax.data.vocab import Ragged, Vocab

    vocab = Vocab.from_symbols("()")
    seqs = Ragged.from_strings(strings, vocab)
    return Dataset("brackets", "brackets", vocab, seqs, seqs, seqs, language=Brackets())


def jax_epoch(strings, e, h, budget, *, feed="bucket", backend="auto", precision="fp32", max_buckets=12,
              steps_per_call=0, chunk=None):
    """One epoch of `strings` as `seqgen train` runs it, with the given feed: (variant running the next
    epoch, compile seconds, prep seconds, real tokens per epoch).

    The feed's device matrices are built and placed once (`prep`, timed apart), every block shape is
    compiled ahead (`compile`, timed apart); each call of the variant runs one whole epoch: the block
    order, the per-block transfers and the steps."""
    import jax

    from seqgen_jax.config import RunConfig
    from seqgen_jax.parallel import Placement
    from seqgen_jax.step import init_train_state, make_optimizer
    from seqgen_jax.train import make_feed

    ds = epoch_dataset(strings)
    cfg = RunConfig().override(**{"model.embed": e, "model.hidden": h, "model.vocab_size": len(ds.vocab),
                                  "model.backend": backend, "model.precision": "bf16" if precision == "bf16" else "fp32",
                                  "train.max_buckets": max_buckets, "train.max_tokens": budget, "data.feed": feed,
                                  "train.steps_per_call": steps_per_call, "data.chunk": chunk})
    place = Placement.for_devices("all")
    t = time.perf_counter()
    fd = make_feed(cfg, ds, place)
    tx = make_optimizer(cfg, 10_000)
    state = init_train_state(cfg, tx)
    if fd.spec.window is not None:
        state["carry"] = fd.init_carry()
    holder = {"s": place.put_state(state), "epoch": 0}
    runner = place.block_runner(cfg, tx, fd.spec)
    examples = fd.examples(holder["s"])
    jax.block_until_ready([x[1] for x in examples])
    prep = time.perf_counter() - t
    compile_s = runner.compile(examples)

    def run():
        st = holder["s"]
        if "carry" in st:
            st["carry"] = place.put_carry(fd.init_carry())
        for block in fd.blocks(holder["epoch"]):
            st, m = runner(st, block.data, block.xs, block.live)
        holder["s"], holder["epoch"] = st, holder["epoch"] + 1
        return st["params"]

    return (run, jax.block_until_ready), compile_s, prep, fd.tokens_per_epoch


def bucket_split(strings, budget, max_buckets=12):
    """The bucket plan and padded matrices (host arrays) PyTorch's epoch rows train on: the same plan
    as seqgen_jax's bucket feed."""
    from seqgen_jax.buckets import BucketedSplit
    from seqgen_jax.data.vocab import Ragged, Vocab

    class Host:  # no device placement: PyTorch copies the matrices itself
        def put_rows(self, rows):
            return rows

    return BucketedSplit.build(Ragged.from_strings(strings, Vocab.from_symbols("()")), budget, max_buckets, Host())


# ---------------------------------------------------------------- PyTorch
def torch_device(device: str):
    import torch

    return torch.device("cuda" if device == "gpu" else "cpu")


def torch_train(e, h, V, B, T, *, device="cpu", careful=True, bf16=False, folded=False, compiled=False):
    import torch

    from baseline_torch import Trainer, sync

    dev = torch_device(device)
    tr = Trainer(V, e, h, dev, careful=careful, bf16=bf16, folded=folded, compiled=compiled)
    rows_np = np.random.default_rng(0).integers(4, V, size=(B, T + 1))
    if careful:
        rows = torch.as_tensor(rows_np, device=dev)
        return lambda: tr.step_careful(rows)[0], lambda _: sync(dev)
    seqs = rows_np.tolist()
    return lambda: tr.step_course(seqs), lambda _: sync(dev)


def torch_sample(e, h, V, n, length, *, device="cpu", careful=True, folded=False, compiled=False):
    from baseline_torch import Trainer, sync

    dev = torch_device(device)
    tr = Trainer(V, e, h, dev, careful=careful, folded=folded, compiled=compiled)
    if careful:
        return lambda: tr.sample_carried(n, length), lambda _: sync(dev)
    return lambda: tr.sample_prefix_rerun(n, length), lambda _: sync(dev)


def torch_epoch(split, strings, e, h, *, device="cpu", careful=True, bf16=False, folded=False, compiled=False):
    """A variant running one warm epoch of the same bucket plan (`bucket_split`) per call, the batch
    order shuffled per epoch as seqgen_jax's is: careful = pre-padded matrices on the device."""
    import torch

    from baseline_torch import Trainer, sync
    from seqgen_jax.buckets import epoch_order

    dev = torch_device(device)
    tr = Trainer(6, e, h, dev, careful=careful, bf16=bf16, folded=folded, compiled=compiled)
    plan = split.plan
    if careful:  # pre-padded bucket matrices on the device, once
        mats = [torch.as_tensor(np.asarray(d), device=dev).long() for d in split.data]
    else:
        w2i = {"(": 4, ")": 5}
        enc = [[1] + [w2i[c] for c in s] + [2] for s in strings]
        members = [plan.members(b) for b in range(len(plan.buckets))]
    epoch = {"n": 0}

    def run():
        for b, idx in epoch_order(plan, 0, epoch["n"]):
            if careful:
                tr.step_careful(mats[b][torch.as_tensor(idx, device=dev)])
            else:
                tr.step_course([enc[j] for j in (members[b][i] for i in idx if i < len(members[b]))])
        epoch["n"] += 1

    return run, lambda _: sync(dev)


def first_call_timed(variant):
    """(variant, seconds of its first call): for torch.compile'd variants that call is the compilation,
    reported apart from the timed rounds."""
    t = time.perf_counter()
    variant[1](variant[0]())
    return variant, round(time.perf_counter() - t, 2)
