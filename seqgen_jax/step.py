"""The optimiser, the loss and the step: what one update computes, independent of devices and loops.

`parallel.Placement` jits these for a mesh; `train.py` (buckets) and `stream.py` (text streams) loop
over them. The epoch statistics accumulate on the device inside the step ("acc"), so a loop needs
one host sync per epoch."""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .config import RunConfig
from .model import init_params, token_logprobs


def _warmup(cfg: RunConfig, total_steps: int) -> int:
    return min(cfg.train.warmup_steps, max(total_steps // 10, 1))


def cosine_lr(count, horizon, peak: float, warm: int, end: float):
    """Linear warm-up from 0 to `peak` over `warm` steps, then a cosine to `end` at step `horizon`
    (optax.warmup_cosine_decay_schedule's curve, with the horizon a value instead of a constant)."""
    count = jnp.asarray(count, jnp.float32)
    horizon = jnp.maximum(jnp.asarray(horizon, jnp.float32), warm + 1.0)
    frac = jnp.clip((count - warm) / (horizon - warm), 0.0, 1.0)
    decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(count < warm, peak * count / max(warm, 1), decayed)


class FittedCosine:
    """The host's view of a `cosine-time` schedule: lr(step) for the metrics at the current horizon,
    which `HorizonFit` moves and `set_horizon` copies into the optimiser state."""

    def __init__(self, cfg: RunConfig, total_steps: int):
        self.peak, self.warm, self.total = cfg.train.lr, _warmup(cfg, total_steps), total_steps
        self.end = cfg.train.lr * 0.02
        self.horizon = float(max(total_steps, self.warm + 1))

    def __call__(self, count):
        return cosine_lr(count, self.horizon, self.peak, self.warm, self.end)


def make_schedule(cfg: RunConfig, total_steps: int) -> Callable:
    t = cfg.train
    if t.schedule == "constant":
        return optax.constant_schedule(t.lr)
    if t.schedule == "cosine-time":
        return FittedCosine(cfg, total_steps)
    warm = _warmup(cfg, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, t.lr, warm, max(total_steps, warm + 1), end_value=t.lr * 0.02)


class HorizonState(NamedTuple):
    count: jax.Array  # () int32: updates applied
    horizon: jax.Array  # () float32: the step at which the cosine reaches its floor


def _scale_by_fitted_cosine(sched: FittedCosine) -> optax.GradientTransformation:
    # The horizon lives in the optimiser state, so moving it changes no compiled step and a
    # checkpoint restores it with the rest.
    def init(params):
        del params
        return HorizonState(jnp.zeros((), jnp.int32), jnp.asarray(sched.horizon, jnp.float32))

    def update(updates, state, params=None):
        del params
        lr = cosine_lr(state.count, state.horizon, sched.peak, sched.warm, sched.end)
        return jax.tree.map(lambda u: -lr * u, updates), HorizonState(state.count + 1, state.horizon)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: RunConfig, total_steps: int) -> optax.GradientTransformation:
    """The course's optimiser: clip the global norm (5), then Adam, with a schedule so the final model
    (not only the best one) is good. `cosine-time` is the cosine whose horizon `HorizonFit` moves to
    the steps that fit in --max-time, so a run cut by the clock still ends at the low learning rate."""
    clip = optax.clip_by_global_norm(cfg.train.clip)
    if cfg.train.schedule == "cosine-time":
        return optax.chain(clip, optax.scale_by_adam(b2=cfg.train.adam_b2),
                           _scale_by_fitted_cosine(FittedCosine(cfg, total_steps)))
    return optax.chain(clip, optax.adam(make_schedule(cfg, total_steps), b2=cfg.train.adam_b2))


def get_horizon(state: dict) -> float | None:
    last = state["opt_state"][-1]
    return float(last.horizon) if isinstance(last, HorizonState) else None


def set_horizon(state: dict, horizon: float) -> dict:
    """The state with the schedule's horizon moved: a scalar placed as the old one was (same sharding,
    same committedness, which jit's cache keys on), so the step does not recompile."""
    last = state["opt_state"][-1]
    value = jnp.asarray(horizon, jnp.float32)
    if getattr(last.horizon, "committed", False):
        value = jax.device_put(value, last.horizon.sharding)
    state["opt_state"] = (*state["opt_state"][:-1], last._replace(horizon=value))
    return state


class HorizonFit:
    """Moves a `cosine-time` schedule's horizon to the steps that fit before the deadline.

    The rate is measured over the last `window` seconds of log points (a tenth of the time limit, at
    least 10 s), so one-off costs (compiling each bucket as it first appears, the first epoch's
    evaluation) stop counting once they are behind; the horizon never passes the planned steps.
    Inactive without a deadline, for other schedules, and across processes (each host's clock would
    give the replicated state a different value)."""

    MIN_SECONDS = 10.0

    def __init__(self, sched, deadline: float, *, processes: int = 1):
        self.sched = sched if isinstance(sched, FittedCosine) else None
        self.deadline = deadline
        self.active = self.sched is not None and deadline != float("inf") and processes == 1
        self.window = max(self.MIN_SECONDS, 0.1 * (deadline - time.time())) if self.active else 0.0
        self.points: list[tuple[float, int]] = []

    def update(self, gstep: int, now: float) -> float | None:
        """A new horizon to set, or None."""
        if not self.active:
            return None
        self.points.append((now, gstep))
        t0, g0 = self.points[0]
        if now - t0 < self.MIN_SECONDS or gstep <= g0:
            return None
        while len(self.points) > 2 and now - self.points[1][0] >= self.window:
            self.points.pop(0)
        t0, g0 = self.points[0]
        rate = (gstep - g0) / (now - t0)
        fit = gstep + rate * max(self.deadline - now, 0.0)
        h = float(min(self.sched.total, max(fit, gstep + 1.0)))
        if abs(h - self.sched.horizon) < max(1.0, 0.002 * self.sched.total):
            return None
        self.sched.horizon = h
        return h


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
