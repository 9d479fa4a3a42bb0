"""Data parallelism on simulated CPU devices (in a subprocess: XLA_FLAGS must be set before JAX starts)."""
import json
import os
import subprocess
import sys
import textwrap

from conftest import ROOT

SCRIPT = textwrap.dedent(r'''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from seqgen_jax import sharding as shd
    from seqgen_jax.config import RunConfig
    from seqgen_jax.data import build_dataset
    from seqgen_jax.train import BucketedSplit, epoch_order, init_train_state, make_optimizer, make_train_step, train
    from seqgen_jax.cli_run import _restore
    assert jax.device_count() == 4, jax.devices()
    cfg = RunConfig().override(**{"data.name": "brackets", "data.n_train": 800, "data.n_val": 100,
        "model.embed": 8, "model.hidden": 12, "model.vocab_size": 6, "train.max_tokens": 800,
        "train.max_buckets": 3, "train.epochs": 2, "train.eval_samples": 8})
    ds = build_dataset(cfg.data)
    out = {}
    params = {}
    for n in (1, 4):
        mesh = shd.make_mesh(n)
        # The same global batches for both: batch sizes are multiples of 4 in both plans.
        split = BucketedSplit.build(ds.train, cfg.train.max_tokens, 3, shd.make_mesh(4))
        split.data = [jax.device_put(d, shd.replicated(mesh)) for d in split.data]
        tx = make_optimizer(cfg, 100)
        state = jax.device_put(init_train_state(cfg, tx), shd.replicated(mesh))
        step = make_train_step(cfg, tx)
        for b, idx in epoch_order(split.plan, 0, 0)[:12]:
            state, m = step(state, split.data[b], shd.put(idx, shd.batch_sharded(mesh)))
        params[n] = jax.tree.map(np.asarray, state["params"])
        out[f"shards_{n}"] = len(m["loss"].sharding.device_set) if hasattr(m["loss"], "sharding") else 1
    diffs = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[4]))]
    out["max_param_diff"] = max(diffs)
    # End to end on 4 devices, then restore on 1 device (another device count).
    rec = train(cfg.override(**{"train.devices": "4"}), sys.argv[1], log=lambda s: None)
    out["val"] = rec["val_ce_bits_per_token"]
    c, v, p, s = _restore(sys.argv[1], "latest")
    out["restored_devices"] = len(jax.tree.leaves(p)[0].sharding.device_set)
    out["restored_step"] = int(s)
    print("RESULT " + json.dumps(out))
''')


def test_four_devices_equal_one_and_checkpoints_move(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=600)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, p.stderr[-3000:]
    out = json.loads(line[0][7:])
    assert out["max_param_diff"] < 1e-5
    assert out["restored_step"] > 0 and out["restored_devices"] >= 1
    run = tmp_path / "run"
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(l) for l in metrics if '"epoch"' in l]
    assert [e["epoch"] for e in epochs] == [1, 2]  # written once, not once per device
    assert len(list((run / "checkpoints").iterdir())) >= 1
