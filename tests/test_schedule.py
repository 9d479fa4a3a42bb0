"""The learning-rate schedules, against optax's own: `cosine-time` (the default) is optax's warm-up
cosine until the clock moves its horizon, moving it recompiles nothing, and a run cut by --max-time
ends near the floor instead of near the peak."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqgen_jax.config import RunConfig
from seqgen_jax.step import FittedCosine, HorizonFit, cosine_lr, get_horizon, make_optimizer, set_horizon
from seqgen_jax.train import train

PEAK = 0.01


@pytest.mark.parametrize("warm,total", [(5, 40), (50, 51), (1, 3), (10, 1000)])
def test_cosine_curve_is_optax_warmup_cosine(warm, total):
    ref = optax.warmup_cosine_decay_schedule(0.0, PEAK, warm, total, end_value=PEAK * 0.02)
    for count in list(range(0, min(total + 20, 200))) + [total - 1, total, total + 500]:
        assert float(cosine_lr(count, total, PEAK, warm, PEAK * 0.02)) == pytest.approx(float(ref(count)), rel=1e-5,
                                                                                          abs=1e-9), count


def _cfg(schedule="cosine-time"):
    return RunConfig().override(**{"train.lr": PEAK, "train.warmup_steps": 4, "train.schedule": schedule})


def test_cosine_time_updates_are_clip_adam_with_the_moved_horizon():
    """30 updates of random gradients; the horizon moves from 40 to 12 after step 8. Reference: optax's
    clip + Adam moments, scaled by optax's schedule for horizon 40 and then for horizon 12."""
    cfg, total = _cfg(), 40
    tx = make_optimizer(cfg, total)
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    state = {"params": params, "opt_state": tx.init(params)}
    ref_tx = optax.chain(optax.clip_by_global_norm(cfg.train.clip), optax.scale_by_adam())
    ref_params, ref_state = params, ref_tx.init(params)
    sched = {40: optax.warmup_cosine_decay_schedule(0.0, PEAK, 4, 40, end_value=PEAK * 0.02),
             12: optax.warmup_cosine_decay_schedule(0.0, PEAK, 4, 12, end_value=PEAK * 0.02)}
    upd = jax.jit(lambda g, s, p: tx.update(g, s, p))
    rng = np.random.default_rng(0)
    horizon = 40
    for count in range(30):
        if count == 8:
            state = set_horizon(state, 12.0)
            horizon = 12
            assert get_horizon(state) == 12.0
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 3, jnp.float32), params)
        u, state["opt_state"] = upd(grads, state["opt_state"], state["params"])
        state["params"] = optax.apply_updates(state["params"], u)
        ru, ref_state = ref_tx.update(grads, ref_state, ref_params)
        lr = sched[horizon](count)
        ref_params = jax.tree.map(lambda p, d: p - lr * d, ref_params, ru)
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert upd._cache_size() == 1  # the horizon is state, not a constant baked into the step


def test_horizon_fit_follows_the_clock():
    sched = FittedCosine(_cfg(), 10_000)
    fit = HorizonFit(sched, deadline=500.0)
    assert fit.active
    assert fit.update(0, 0.0) is None  # starts the clock
    assert fit.window == 10.0  # a tenth of the time left, at least 10 s
    assert fit.update(50, 5.0) is None  # too early to judge the rate
    h = fit.update(200, 20.0)  # 10 steps/s, 480 s left: 200 + 4,800
    assert h == pytest.approx(5_000) and sched.horizon == pytest.approx(5_000)
    assert fit.update(210, 21.0) is None  # the same estimate: nothing to move
    # The rate is that of the last `window` seconds (here 10 s): 20 steps/s from 30 s on.
    assert fit.update(410, 31.0) == pytest.approx(410 + (410 - 210) / 10 * 469)
    assert fit.update(420, 600.0) == pytest.approx(421)  # past the deadline: the floor is now
    roomy = HorizonFit(FittedCosine(_cfg(), 1_000), deadline=500.0)
    roomy.update(0, 0.0)
    assert roomy.update(200, 20.0) is None  # 5,000 would fit, but the plan is 1,000: keep it
    for off in (HorizonFit(FittedCosine(_cfg(), 1_000), deadline=math.inf),
                HorizonFit(FittedCosine(_cfg(), 1_000), deadline=500.0, processes=2),
                HorizonFit(optax.constant_schedule(PEAK), deadline=500.0)):
        assert not off.active and off.update(0, 0.0) is None and off.update(200, 20.0) is None


def test_a_run_cut_by_the_clock_ends_at_the_floor(tmp_path, monkeypatch):
    """Planned for ~70,000 steps, allowed 20 s of a clock that ticks 0.05 s each time the loop reads it
    (about one read a step: ~400 steps whatever the machine's speed): the last logged learning rate is
    near the floor (a plain cosine would still be at ~0.99 of the peak), and the checkpoint keeps the
    fitted horizon."""
    import types

    import seqgen_jax.step
    import seqgen_jax.train

    clock = {"t": 1_000.0}

    def tick():
        clock["t"] += 0.05
        return clock["t"]

    monkeypatch.setattr(seqgen_jax.train, "time", types.SimpleNamespace(time=tick))
    monkeypatch.setattr(seqgen_jax.step, "time", types.SimpleNamespace(time=tick))
    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 3000, "data.n_val": 100,
                                  "data.n_test": 100, "model.embed": 8, "model.hidden": 12, "train.epochs": 600,
                                  "train.max_tokens": 400, "train.log_every": 5, "train.eval_samples": 10,
                                  "train.max_buckets": 4, "train.lr": PEAK, "train.max_time": 20.0,
                                  "data.feed": "bucket"})
    train(cfg, tmp_path / "r", log=lambda s: None)
    steps = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "lr" in m and "epoch" not in m]
    planned = json.loads((tmp_path / "r" / "config.json").read_text())["train"]["epochs"]
    assert planned == 600 and len(steps) > 20
    assert steps[-1]["lr"] < 0.2 * PEAK, steps[-1]
    assert max(m["lr"] for m in steps) > 0.9 * PEAK  # it did reach the peak first

    from seqgen_jax.run import RunDir
    from seqgen_jax.step import init_train_state

    cfg6 = cfg.override(**{"model.vocab_size": 6})
    state = init_train_state(cfg6, make_optimizer(cfg6, 100))
    ck = RunDir(str(tmp_path / "r")).checkpointer(create=False)
    step, _, rest, _ = ck.restore("latest", state["params"], {k: v for k, v in state.items() if k != "params"})
    ck.close()
    assert step >= steps[-1]["step"] and get_horizon(rest) < step + 50

    # Resumed without a deadline and with fewer epochs, it follows the plain cosine of the new plan.
    monkeypatch.undo()
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = next(m["step"] for m in recs if "epoch" in m and m["epoch"] == 1)
    short = cfg.override(**{"train.epochs": step // per_epoch + 3, "train.max_time": None})
    train(short, tmp_path / "r", resume=True, log=lambda s: None)
    after = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    after = [m for m in after if "lr" in m and "epoch" not in m and m["step"] > step]
    total = per_epoch * short.train.epochs
    ref = optax.warmup_cosine_decay_schedule(0.0, PEAK, min(50, total // 10), total, end_value=PEAK * 0.02)
    assert after and all(m["lr"] == pytest.approx(float(ref(m["step"] - 1)), rel=1e-5) for m in after)


@pytest.mark.parametrize("schedule", ["cosine-time", "constant"])
def test_adam_b2_reaches_the_update(schedule):
    """train.adam_b2 against Adam written out in numpy (b1 0.9, eps 1e-8, bias-corrected), with
    gradients small enough that the clip never acts; b2 0.95 is far enough from 0.999 that an ignored
    setting moves the parameters by far more than the tolerance, and differs from b1 so that b2 passed
    as b1 fails too."""
    cfg, total = _cfg(schedule).override(**{"train.adam_b2": 0.95}), 40
    tx = make_optimizer(cfg, total)
    p = {"w": jnp.ones((3, 4))}
    s = tx.init(p)
    ref = optax.warmup_cosine_decay_schedule(0.0, PEAK, 4, total, end_value=PEAK * 0.02)
    w, m, v = np.ones((3, 4)), np.zeros((3, 4)), np.zeros((3, 4))
    rng = np.random.default_rng(1)
    for count in range(12):
        g = rng.normal(size=(3, 4)) * 0.1 * (1 + count % 3)
        u, s = tx.update({"w": jnp.asarray(g, jnp.float32)}, s, p)
        p = optax.apply_updates(p, u)
        m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
        mhat, vhat = m / (1 - 0.9 ** (count + 1)), v / (1 - 0.95 ** (count + 1))
        lr = PEAK if schedule == "constant" else float(ref(count))
        w = w - lr * mhat / (np.sqrt(vhat) + 1e-8)
    np.testing.assert_allclose(np.asarray(p["w"]), w, rtol=1e-5, atol=1e-7)


def test_adam_b2_out_of_range_is_one_clear_error():
    from seqgen_jax.config import validate
    from seqgen_jax.errors import UserError

    with pytest.raises(UserError, match="adam_b2 1.0 must be in"):
        validate(_cfg().override(**{"train.adam_b2": 1.0}))
