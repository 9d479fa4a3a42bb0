"""The optimiser, the loss and the step: what one update computes, independent of devices and loops.

`parallel.Placement` jits these for a mesh, K steps to a call (`block_fn`); `train.py` loops over the
blocks a feed (`feeds.py`) gives. The epoch statistics accumulate on the device inside the step
("acc"), so the loop needs one host sync per epoch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .config import RunConfig
from .data.vocab import END_ID, PAD_ID, START_ID
from .model import LSTMState, apply_tm, init_params


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
    """The host's view of the learning rate per step (for the records); the optimiser computes the same
    curve from its state (`schedule_lr`)."""
    t = cfg.train
    if t.schedule == "constant":
        return optax.constant_schedule(t.lr)
    if t.schedule == "cosine-time":
        return FittedCosine(cfg, total_steps)
    warm = _warmup(cfg, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, t.lr, warm, max(total_steps, warm + 1), end_value=t.lr * 0.02)


class HyperState(NamedTuple):
    """The optimiser's state, its hyperparameters included as arrays: a step compiled once serves every
    value (a sweep vmaps over members that differ only in these), and a checkpoint restores them."""

    count: jax.Array  # () int32: updates applied
    lr: jax.Array  # () float32: the peak learning rate
    clip: jax.Array  # () float32: the global-norm clip
    b1: jax.Array  # () float32: Adam's first-moment decay
    b2: jax.Array  # () float32: Adam's second-moment decay
    warm: jax.Array  # () float32: warm-up steps
    horizon: jax.Array  # () float32: the step at which the cosine reaches its floor (cosine-time moves it)
    mu: dict  # Adam's moments, like the parameters
    nu: dict


def hyperparameters(cfg: RunConfig, total_steps: int) -> dict:
    """The per-run values HyperState holds, from the config."""
    warm = _warmup(cfg, total_steps)
    return {"lr": cfg.train.lr, "clip": cfg.train.clip, "b1": cfg.train.adam_b1, "b2": cfg.train.adam_b2,
            "warm": float(warm), "horizon": float(max(total_steps, warm + 1))}


def make_optimizer(cfg: RunConfig, total_steps: int) -> optax.GradientTransformation:
    """The course's optimiser: clip the global norm (5), then Adam, with a schedule so the final model
    (not only the best one) is good. `cosine-time` is the cosine whose horizon `HorizonFit` moves to
    the steps that fit in --max-time, so a run cut by the clock still ends at the low learning rate.

    One transformation with its hyperparameters in its state (HyperState); it computes exactly
    optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule, b1, b2)) (tests/test_schedule.py)."""
    kind = cfg.train.schedule
    hp = hyperparameters(cfg, total_steps)

    def init(params, values: dict | None = None):
        v = {**hp, **(values or {})}
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return HyperState(jnp.zeros((), jnp.int32), *(jnp.asarray(v[k], jnp.float32)
                                                      for k in ("lr", "clip", "b1", "b2", "warm", "horizon")),
                          zeros(), zeros())

    def update(grads, state: HyperState, params=None):
        del params
        g_norm = _global_norm(grads)
        # optax.clip_by_global_norm: unchanged below the threshold, else scaled onto it.
        grads = jax.tree.map(lambda g: jnp.where(g_norm < state.clip, g, g / g_norm * state.clip), grads)
        mu = jax.tree.map(lambda m, g: state.b1 * m + (1.0 - state.b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: state.b2 * v + (1.0 - state.b2) * g * g, state.nu, grads)
        t = (state.count + 1).astype(jnp.float32)
        c1, c2 = 1.0 - state.b1 ** t, 1.0 - state.b2 ** t
        lr = schedule_lr(kind, state.count, state.lr, state.warm, state.horizon)
        upd = jax.tree.map(lambda m, v: -lr * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), mu, nu)
        return upd, state._replace(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def schedule_lr(kind: str, count, peak, warm, horizon):
    """The learning rate of update number `count` (from 0) for a schedule kind."""
    if kind == "constant":
        return jnp.asarray(peak, jnp.float32) * jnp.ones((), jnp.float32)
    count = jnp.asarray(count, jnp.float32)
    warm = jnp.asarray(warm, jnp.float32)
    horizon = jnp.maximum(jnp.asarray(horizon, jnp.float32), warm + 1.0)
    end = 0.02 * peak
    frac = jnp.clip((count - warm) / (horizon - warm), 0.0, 1.0)
    decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(count < warm, peak * count / jnp.maximum(warm, 1.0), decayed)


def get_horizon(state: dict) -> float | None:
    opt = state["opt_state"]
    return float(opt.horizon) if isinstance(opt, HyperState) else None


def set_horizon(state: dict, horizon: float) -> dict:
    """The state with the schedule's horizon moved: a scalar placed as the old one was (same sharding,
    same committedness, which jit's cache keys on), so the step does not recompile."""
    opt = state["opt_state"]
    value = jnp.asarray(horizon, jnp.float32)
    if getattr(opt.horizon, "committed", False):
        value = jax.device_put(value, opt.horizon.sharding)
    state["opt_state"] = opt._replace(horizon=value)
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
    """params, optimiser state (hyperparameters included), step counter, the run's seed (dropout keys
    come from it on the device, so members of a sweep with other seeds share one program) and the
    epoch statistics."""
    params = init_params(cfg.model, cfg.train.seed)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "seed": jnp.asarray(cfg.train.seed, jnp.uint32), "acc": zero_acc()}


@dataclass(frozen=True)
class StepSpec:
    """What one step reads and carries; static, so it keys compilations.

    window None: a bucket step, rows gathered from a bucket matrix by a (B,) index vector, each from a
    zero state. window W: a window step, the (B, W + 1) columns starting at a scalar column of a
    (B, cols) stream matrix; `carry` continues from the previous window's LSTM state (truncated BPTT);
    `packed` zeroes the state at every `.start` input and scores a `.start` target as the previous
    string's `.end` (`packed_targets`), so strings laid end to end are scored exactly as one by one."""

    window: int | None = None
    carry: bool = False
    packed: bool = False


def gather(spec: StepSpec, data, x):
    """The step's rows (B, T + 1) from the feed's device matrix and the step's input x."""
    if spec.window is None:
        return jnp.take(data, x, axis=0)
    return jax.lax.dynamic_slice(data, (jnp.int32(0), x), (data.shape[0], spec.window + 1))


def packed_targets(targets):
    """A packed row's targets as the strings alone would have them: a `.start` target is the column
    where the previous string ended (`stream.packed_lengths`), so it is scored as that string's `.end`."""
    return jnp.where(targets == START_ID, END_ID, targets)


def rows_nll(params, rows, cfg: RunConfig, *, carry: LSTMState | None = None, dropout_key=None,
             packed: bool = False):
    """rows (B, T + 1) ids -> (sum of -log p over the scored targets, their number, final LSTMState).

    Inputs are rows[:, :-1], targets rows[:, 1:]; padding is never scored. Packed rows zero the state at
    every `.start` input and score a `.start` target as the `.end` of the string before it."""
    tok = rows.T  # (T + 1, B): time-major, so no activation is ever transposed
    inputs, targets = tok[:-1], tok[1:]
    resets = inputs == START_ID if packed else None
    if packed:
        targets = packed_targets(targets)
    logits, state = apply_tm(params, inputs, carry, cfg=cfg.model, dropout_key=dropout_key, resets=resets)
    logp = jax.nn.log_softmax(logits, axis=-1)  # (T, B, V)
    # A one-hot product instead of take_along_axis: its gradient avoids a scatter.
    lp = jnp.sum(logp * jax.nn.one_hot(targets, logits.shape[-1], dtype=logp.dtype), axis=-1)  # (T, B)
    scored = targets != PAD_ID
    return -jnp.where(scored, lp, 0.0).sum(), scored.sum().astype(jnp.float32), state


def masked_nll(params, rows, cfg, dropout_key=None):
    """(sum of -log p over real target tokens, their number): padding never enters the loss."""
    nll, n, _ = rows_nll(params, rows, cfg, dropout_key=dropout_key)
    return nll, n


# optax renamed global_norm to tree.norm; keep both versions (CPU 0.2.8 here, GPU images differ) quiet.
_global_norm = optax.tree.norm if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm


def local_grads(cfg: RunConfig, spec: StepSpec = StepSpec()):
    """(params, data, x, carry, key) -> (sum of -log p, scored tokens, gradient of the sum, new carry)
    for one device's rows. `carry` is a (h, c) pair of (L, B, H) arrays, or None."""

    def fn(params, data, x, carry, key):
        rows = gather(spec, data, x)
        c0 = LSTMState(*jax.lax.stop_gradient(carry)) if spec.carry else None

        def loss(p):
            nll, n, st = rows_nll(p, rows, cfg, carry=c0, dropout_key=key, packed=spec.packed)
            return nll, (n, st)

        (nll, (n, st)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return nll, n, grads, (tuple(st) if spec.carry else None)

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
    new = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1, "acc": acc}
    return new, {"loss": loss, "grad_norm": gn}


def dropout_key(cfg: RunConfig, step, seed=None):
    """The step's dropout key, from the run's seed (an array in the state, or cfg.train.seed)."""
    if cfg.model.dropout <= 0:
        return None
    return jax.random.fold_in(jax.random.key(cfg.train.seed if seed is None else seed), step)


def step_fn(cfg: RunConfig, tx: optax.GradientTransformation, spec: StepSpec = StepSpec()):
    """The single-program step (state, data, x) -> (state, metrics), un-jitted: a bucket step takes
    x = idx (B,) into data (N + 1, L + 1); a window step x = the start column of data (B, cols), with
    state["carry"] when the spec carries one."""
    local = local_grads(cfg, spec)

    def step(state, data, x):
        key = dropout_key(cfg, state["step"], state.get("seed"))
        nll, n, grads, carry = local(state["params"], data, x, state.get("carry"), key)
        new, metrics = apply_grads(tx, {k: v for k, v in state.items() if k != "carry"}, nll, n, grads)
        if spec.carry:
            new["carry"] = carry
        elif "carry" in state:
            new["carry"] = state["carry"]
        return new, metrics

    return step


def block_fn(cfg: RunConfig, tx: optax.GradientTransformation, spec: StepSpec = StepSpec(), *,
             freeze_nonfinite: bool = False):
    """K steps as one program: (state, data, xs (K, ...), live (K,) bool) -> (state, metrics of (K,)).

    A step whose `live` is False leaves the state as it is (a block filled up to its static length K);
    lax.cond runs only the taken branch, so such a step costs nothing. `freeze_nonfinite` (sweeps):
    a step whose loss or gradient is not finite is not applied, and state["frozen"] stops the member
    for good, so one diverging member never stops the others."""
    step = step_fn(cfg, tx, spec)
    quiet = {"loss": jnp.zeros((), jnp.float32), "grad_norm": jnp.zeros((), jnp.float32)}

    def block(state, data, xs, live):
        def one(st, inp):
            x, alive = inp
            if freeze_nonfinite:
                alive = alive & ~st["frozen"]
            new, m = jax.lax.cond(alive, lambda s: step(s, data, x), lambda s: (s, quiet), st)
            if freeze_nonfinite:
                ok = jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"]) & jnp.isfinite(_global_norm(new["params"]))
                bad = alive & ~ok
                new = jax.tree.map(lambda old, upd: jnp.where(bad, old, upd), st, new)
                new["frozen"] = st["frozen"] | bad
            return new, m

        return jax.lax.scan(one, state, (xs, live))

    return block
