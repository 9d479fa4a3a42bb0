"""The optimiser, the loss and the step: what one update computes, independent of devices and loops.

`parallel.Placement` jits these for a mesh; `train.py` (buckets) and `stream.py` (text streams) loop
over them. The epoch statistics accumulate on the device inside the step ("acc"), so a loop needs
one host sync per epoch."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from .config import RunConfig
from .model import init_params, token_logprobs


def make_schedule(cfg: RunConfig, total_steps: int) -> Callable:
    t = cfg.train
    if t.schedule == "constant":
        return optax.constant_schedule(t.lr)
    warm = min(t.warmup_steps, max(total_steps // 10, 1))
    return optax.warmup_cosine_decay_schedule(0.0, t.lr, warm, max(total_steps, warm + 1), end_value=t.lr * 0.02)


def make_optimizer(cfg: RunConfig, total_steps: int) -> optax.GradientTransformation:
    """The course's optimiser: clip the global norm (5), then Adam, with a schedule so the final model
    (not only the best one) is good."""
    return optax.chain(optax.clip_by_global_norm(cfg.train.clip), optax.adam(make_schedule(cfg, total_steps)))


def zero_acc():
    # Distinct buffers: the state is donated, and one buffer cannot be donated twice.
    return {k: jnp.zeros((), jnp.float32) for k in ("nll", "tokens", "gn_sum", "gn_sq", "gn_max", "steps")}


def init_train_state(cfg: RunConfig, tx: optax.GradientTransformation) -> dict:
    params = init_params(cfg.model, cfg.train.seed)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "acc": zero_acc()}


def masked_nll(params, rows, cfg, dropout_key=None):
    """(sum of -log p over real target tokens, their number): padding never enters the loss."""
    lp, _ = token_logprobs(params, rows, cfg=cfg.model, dropout_key=dropout_key)
    return -lp.sum(), (rows[:, 1:] != 0).sum().astype(jnp.float32)


# optax renamed global_norm to tree.norm; keep both versions (CPU 0.2.8 here, GPU images differ) quiet.
_global_norm = optax.tree.norm if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm


def local_grads(cfg: RunConfig):
    """(params, rows, key) -> (sum of -log p, real tokens, gradient of the sum) for one device's rows."""

    def fn(params, rows, key):
        (nll, n), grads = jax.value_and_grad(lambda p: masked_nll(p, rows, cfg, key), has_aux=True)(params)
        return nll, n, grads

    return fn


def apply_grads(tx, state, nll, n, grads):
    """Mean gradient -> clip + Adam, and the epoch statistics accumulated on the device."""
    grads = jax.tree.map(lambda g: g / jnp.maximum(n, 1.0), grads)  # of the mean over real tokens
    loss = nll / jnp.maximum(n, 1.0)
    gn = _global_norm(grads)  # before clipping, as the course plots it
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    a = state["acc"]
    acc = {"nll": a["nll"] + nll, "tokens": a["tokens"] + n, "gn_sum": a["gn_sum"] + gn,
           "gn_sq": a["gn_sq"] + gn * gn, "gn_max": jnp.maximum(a["gn_max"], gn), "steps": a["steps"] + 1}
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "acc": acc}
    return new, {"loss": loss, "grad_norm": gn}


def dropout_key(cfg: RunConfig, step):
    return jax.random.fold_in(jax.random.key(cfg.train.seed), step) if cfg.model.dropout > 0 else None


def step_fn(cfg: RunConfig, tx: optax.GradientTransformation):
    """The single-program step (state, data (N+1, L+1) int32, idx (B,) int32) -> (state, metrics),
    un-jitted: `parallel.Placement.train_step` jits it with donation for its mesh, benchmarks jit it
    bare to price the sharding."""
    local = local_grads(cfg)

    def step(state, data, idx):
        nll, n, grads = local(state["params"], jnp.take(data, idx, axis=0), dropout_key(cfg, state["step"]))
        return apply_grads(tx, state, nll, n, grads)

    return step
