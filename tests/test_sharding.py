"""Data parallelism on simulated CPU devices (in a subprocess: XLA_FLAGS must be set before JAX starts)."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT

SCRIPT = textwrap.dedent(r'''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from seqgen_jax.config import RunConfig
    from seqgen_jax.data import build_dataset
    from seqgen_jax.buckets import BucketedSplit, epoch_order
    from seqgen_jax.parallel import HostParallelStep, Placement
    from seqgen_jax.step import init_train_state, make_optimizer
    from seqgen_jax.train import train
    from seqgen_jax.run import RunDir
    assert jax.device_count() == 4, jax.devices()
    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 800, "data.n_val": 100,
        "model.embed": 8, "model.hidden": 12, "model.vocab_size": 6, "train.max_tokens": 800,
        "train.max_buckets": 3, "train.epochs": 2, "train.eval_samples": 8})
    ds = build_dataset(cfg.data)
    out = {}
    params = {}
    for n in (1, 4):
        place = Placement.for_devices(n)
        # The plan does not depend on the mesh: the same batches, filled up with padding rows to a
        # multiple of the devices.
        split = BucketedSplit.build(ds.train, cfg.train.max_tokens, 3, place)
        tx = make_optimizer(cfg, 100)
        state = place.put_state(init_train_state(cfg, tx))
        step = place.train_step(cfg, tx)
        out[f"host_parallel_{n}"] = isinstance(step, HostParallelStep)
        order = epoch_order(split.plan, 0, 0)[:12]
        for b, idx in order:
            state, m = step(state, *split.batch(b, idx))
        params[n] = jax.tree.map(np.asarray, state["params"])
        out[f"odd_batches_{n}"] = sum(len(idx) % 4 != 0 for _, idx in epoch_order(split.plan, 0, 0))
        if n == 4:
            out["compilations"] = step.compilations()
            out["buckets_used"] = len({b for b, _ in order})
    diffs = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[4]))]
    out["max_param_diff"] = max(diffs)
    # End to end on 4 devices, then restore on 1 device (another device count).
    rec = train(cfg.override(**{"train.devices": "4"}), sys.argv[1], log=lambda s: None)
    out["val"] = rec["val_ce_bits_per_token"]
    c, v, p, s = RunDir(sys.argv[1]).restore("latest")
    from seqgen_jax.model import apply
    out["logits"] = np.asarray(apply(p, jnp.asarray([[1, 4, 4, 5, 5]]), cfg=c.model)[0]).tolist()
    out["devices"] = jax.device_count()
    out["restored_step"] = int(s)
    print("RESULT " + json.dumps(out))
''')


RESTORE = textwrap.dedent(r'''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from seqgen_jax.run import RunDir
    from seqgen_jax.model import apply
    c, v, p, s = RunDir(sys.argv[1]).restore("latest")
    logits = np.asarray(apply(p, jnp.asarray([[1, 4, 4, 5, 5]]), cfg=c.model)[0]).tolist()
    print("RESULT " + json.dumps({"devices": jax.device_count(), "step": int(s), "logits": logits}))
''')


def test_four_devices_equal_one_and_checkpoints_move(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=600)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, p.stderr[-3000:]
    out = json.loads(line[0][7:])
    assert out["max_param_diff"] < 1e-5
    assert out["host_parallel_4"] and not out["host_parallel_1"]
    assert out["odd_batches_4"] > 0  # some batches needed padding rows to spread over 4 devices
    assert out["compilations"] == out["buckets_used"]  # each bucket shape once, not once per step
    assert out["restored_step"] > 0
    # The checkpoint written on 4 devices restores in a 1-device process to the same model.
    one = subprocess.run([sys.executable, "-c", RESTORE, str(tmp_path / "run")], capture_output=True, text=True,
                         env=dict(os.environ, SEQGEN_CPU_DEVICES="1", JAX_PLATFORMS="cpu", XLA_FLAGS=""),
                         cwd=ROOT, timeout=300)
    line1 = [l for l in one.stdout.splitlines() if l.startswith("RESULT ")]
    assert line1, one.stderr[-3000:]
    o1 = json.loads(line1[0][7:])
    assert out["devices"] == 4 and o1["devices"] == 1 and o1["step"] == out["restored_step"]
    np.testing.assert_allclose(o1["logits"], out["logits"], rtol=1e-5, atol=1e-6)
    run = tmp_path / "run"
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(l) for l in metrics if '"epoch"' in l]
    assert [e["epoch"] for e in epochs] == [1, 2]  # written once, not once per device
    assert len(list((run / "checkpoints").iterdir())) >= 1


def test_cpu_device_flags(monkeypatch):
    """One XLA:CPU device per core unless told otherwise; a user's own device-count flag wins."""
    from seqgen_jax import _devices

    kept = []
    monkeypatch.setattr(_devices, "_state", {"kept": False})
    monkeypatch.setattr(_devices, "reuse_host_memory", lambda: kept.append(os.environ.get("SEQGEN_CPU_DEVICES")))
    monkeypatch.delenv("SEQGEN_CPU_DEVICES", raising=False)
    monkeypatch.delenv("SEQGEN_HOST_MALLOC", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.setattr(_devices, "default_count", lambda: 2)
    _devices.configure_host_devices()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == ["--xla_dump_to=/tmp/x", "--xla_force_host_platform_device_count=2",
                     "--xla_cpu_multi_thread_eigen=false"]
    _devices.configure_host_devices()  # idempotent: the count is already set
    assert os.environ["XLA_FLAGS"].split() == flags
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("SEQGEN_CPU_DEVICES", "1")
    _devices.configure_host_devices()
    assert os.environ["XLA_FLAGS"] == ""
    monkeypatch.setenv("SEQGEN_CPU_DEVICES", "3")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    _devices.configure_host_devices()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_cpu_multi_thread_eigen=true",
                                               "--xla_force_host_platform_device_count=3"]
    assert kept == ["1"]  # only the one-device process kept its host memory
    monkeypatch.setenv("SEQGEN_HOST_MALLOC", "keep")
    _devices.configure_host_devices()
    assert kept == ["1", "3"]


def test_large_steps_keep_host_memory_before_the_backend_starts(monkeypatch):
    from seqgen_jax import _devices

    calls = []
    monkeypatch.setattr(_devices, "_state", {"kept": False})
    monkeypatch.setattr(_devices, "reuse_host_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(_devices, "_backend_started", lambda: False)
    monkeypatch.setattr(_devices, "_host_only", lambda: True)
    monkeypatch.delenv("SEQGEN_HOST_MALLOC", raising=False)
    # The rule: tokens per device and step times the layers' units, against the threshold.
    least = _devices.KEEP_MEMORY_FROM_TOKEN_UNITS
    assert _devices.keeps_host_memory_for(least // 100, 1, 200, 2)
    assert not _devices.keeps_host_memory_for(least // 100, 1, 199, 2)
    assert _devices.keeps_host_memory_for(least // 200, 2, 200, 2)  # two layers count twice
    assert not _devices.keeps_host_memory_for(least // 100, 1, 200, 3)  # a third device halves nothing
    flags = os.environ.get("XLA_FLAGS")
    assert not _devices.prepare_for_step(16, 1, 10_000, 2) and calls == []
    assert _devices.prepare_for_step(300, 1, 10_000, 2) and calls == [1]
    assert os.environ.get("XLA_FLAGS") == flags  # the device layout is not touched
    monkeypatch.setattr(_devices, "_state", {"kept": True})
    assert not _devices.prepare_for_step(1024, 1, 10_000, 2) and calls == [1]  # once
    monkeypatch.setattr(_devices, "_state", {"kept": False})
    monkeypatch.setenv("SEQGEN_HOST_MALLOC", "system")  # the user's word stands
    assert not _devices.prepare_for_step(1024, 1, 10_000, 2)
    monkeypatch.delenv("SEQGEN_HOST_MALLOC")
    monkeypatch.setattr(_devices, "_host_only", lambda: False)  # an accelerator process
    assert not _devices.prepare_for_step(1024, 1, 10_000, 2)
    monkeypatch.setattr(_devices, "_host_only", lambda: True)
    monkeypatch.setattr(_devices, "_backend_started", lambda: True)  # too late to matter: leave it
    assert not _devices.prepare_for_step(1024, 1, 10_000, 2) and calls == [1]
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=false")
    assert _devices.host_device_count() == 4
    monkeypatch.setenv("XLA_FLAGS", "")
    assert _devices.host_device_count() == 1


@pytest.mark.parametrize("max_tokens", [10_000, 1_000])
def test_seqgen_train_keeps_host_memory_for_large_steps_only(tmp_path, max_tokens):
    """The real command, in a fresh process: the setting must come before anything starts JAX's backend
    (train() once asked jax.process_count() first, and wide layers silently ran with glibc's allocator)."""
    from seqgen_jax._devices import keeps_host_memory_for

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SEQGEN_CPU_DEVICES", "SEQGEN_HOST_MALLOC",
                                                            "SEQGEN_ADDED_XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    run = tmp_path / "r"
    p = subprocess.run([sys.executable, "-m", "seqgen_jax", "train", "brackets", "--embed", "8", "--hidden", "128",
                        "--max-tokens", str(max_tokens), "--n-train", "200", "--n-val", "50", "--epochs", "1",
                        "--run-dir", str(run)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (ev,) = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"compile"' in l]
    cores = min(len(os.sched_getaffinity(0)), 8)
    kept = platform.libc_ver()[0] == "glibc" and (cores == 1 or keeps_host_memory_for(128, 1, max_tokens, cores))
    assert kept == (max_tokens == 10_000 or cores == 1)  # the two cases differ on any machine of 2-8 cores
    assert ev["host_memory_kept"] == kept and ev["devices"] == cores
    assert ("(freed host memory kept)" in p.stdout) == kept


def test_batches_are_filled_with_the_padding_row_to_a_multiple_of_the_devices():
    import numpy as np

    from seqgen_jax.parallel import Placement

    place = Placement.__new__(Placement)  # the filling rule alone, without a 4-device mesh
    place.n_devices, place.host_parallel = 4, True
    out = place.put_idx(np.array([3, 1, 4, 0, 2], np.int32), 7)
    assert out.tolist() == [3, 1, 4, 0, 2, 7, 7, 7]  # row 7 is the all-padding row
    assert place.put_idx(np.arange(4, dtype=np.int32), 7).tolist() == [0, 1, 2, 3]


FAULTS = r'''
import resource
import seqgen_jax  # noqa: F401  (sets the host allocator before JAX starts)
import jax, numpy as np
from seqgen_jax.config import RunConfig
from seqgen_jax.step import init_train_state, make_optimizer, step_fn

# A (300, 300) train step on 500 x 10 tokens: about 90 MB of temporaries per execution.
cfg = RunConfig().override(**{"model.embed": 300, "model.hidden": 300, "model.vocab_size": 6})
tx = make_optimizer(cfg, 100)
rows = np.random.default_rng(0).integers(4, 6, size=(500, 11)).astype(np.int32)
state = jax.device_put(init_train_state(cfg, tx))
step = jax.jit(step_fn(cfg, tx), donate_argnums=(0,))
data, idx = jax.device_put(rows), jax.device_put(np.arange(500, dtype=np.int32))
for _ in range(2):
    state, m = step(state, data, idx)
jax.block_until_ready(m)
per_step = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, m = step(state, data, idx)
    jax.block_until_ready(m)
    per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("FAULTS", float(min(per_step)))
'''


def test_a_train_steps_temporaries_reuse_mapped_pages():
    """XLA:CPU frees each execution's temporaries; by default glibc returned blocks this large to the
    kernel, so every step faulted in fresh zeroed pages (45,000 per (300, 300) step of 1000 x 10
    tokens). With the setting large steps get (`prepare_for_step`, forced here by SEQGEN_HOST_MALLOC=keep
    on the per-core devices), steps reuse them. The test takes the step with the fewest faults: glibc now and then
    strands a block and grows the heap again (under a busy machine, most steps did in one CI run:
    median 18,484), but under its default no step can reuse its pages at all;
    SEQGEN_HOST_MALLOC=system restores glibc's default, which must show the faults (else this test
    would measure nothing)."""
    def faults(extra):
        env = dict(os.environ, JAX_PLATFORMS="cpu", SEQGEN_CPU_DEVICES="2", XLA_FLAGS="", **extra)
        p = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=300)
        line = [l for l in p.stdout.splitlines() if l.startswith("FAULTS ")]
        assert line, p.stderr[-3000:]
        return float(line[0].split()[1])

    assert faults({"SEQGEN_HOST_MALLOC": "system"}) > 10_000
    assert faults({"SEQGEN_HOST_MALLOC": "keep"}) < 1_000
