"""Sweeps: members trained together as one vmapped program end exactly where each would alone, every
member is an ordinary run directory, and the reports rank them."""
import json
import math

import pytest

import seqgen_jax as sg
from seqgen_jax.errors import UserError
from seqgen_jax.sweeps import group_key, plan_members

SMALL = {"data.n_train": 400, "data.n_val": 60, "data.n_test": 60, "model.embed": 8, "model.hidden": 12,
         "train.epochs": 2, "train.max_tokens": 600, "train.eval_samples": 10, "train.log_every": 3,
         "train.max_buckets": 3}


def _last(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]


@pytest.mark.parametrize("feed", ["packed", "bucket"])
def test_a_member_ends_where_it_would_alone(tmp_path, feed):
    """Two learning rates x two seeds in one program; each member against the same configuration
    trained alone: a member that used another member's value or order would differ."""
    cfg = sg.config("brackets", **SMALL, **{"data.feed": feed})
    grid = {"train.lr": [0.003, 0.02]}
    sg.sweep(cfg, grid, seeds=2, run_dir=tmp_path / "sw", log=lambda s: None)
    for lr, seed in ((0.02, 1), (0.003, 0)):
        alone = tmp_path / f"alone-{lr}-{seed}"
        sg.train(cfg.override(**{"train.lr": lr, "train.seed": seed}), alone, log=lambda s: None)
        a, b = _last(alone), _last(tmp_path / "sw" / f"lr={lr:g}-seed={seed}")
        assert len(a) == len(b) == 2
        for ra, rb in zip(a, b):
            for k in ("train_loss", "val_ce_bits_per_token", "grad_norm_mean"):
                assert rb[k] == pytest.approx(ra[k], rel=1e-4), (lr, seed, k)
    # The members really differ: a shared value or order would make these equal.
    m = {n.name: _last(n)[-1]["val_ce_bits_per_token"] for n in (tmp_path / "sw").iterdir() if n.is_dir()}
    assert len({round(v, 6) for v in m.values()}) == 4


def test_sweep_cli_makes_restorable_runs_and_a_summary(tmp_path, capsys):
    from seqgen_jax import cli

    d = tmp_path / "D"
    rc = cli.main(["sweep", "ndfa", "--seeds", "4", "--grid", "train.lr=0.001,0.003", "--run-dir", str(d),
                   "--epochs", "1", "--n-train", "300", "--n-val", "50", "--n-test", "50", "--max-tokens", "1500",
                   "--set", "train.eval_samples=10"])
    assert rc == 0, capsys.readouterr().err
    members = sorted(p.name for p in d.iterdir() if p.is_dir())
    assert len(members) == 8
    for name in members:
        run = sg.load(d / name)
        assert run.config.train.lr in (0.001, 0.003)
        assert len(run.sample(n=2, max_len=30)) == 2
    summary = (d / "summary.md").read_text()
    cells = [l for l in summary.splitlines() if l.startswith("| lr=") and "seed=" not in l]
    assert len(cells) == 2 and all(" ± " in l for l in cells)
    rep = json.loads((d / "sweep.json").read_text())
    assert [c["seeds"] for c in rep["cells"]] == [4, 4] and (d / "sweep.png").exists()
    assert cli.main(["sample", str(d / members[0]), "--n", "2"]) == 0
    # A second sweep into the same directory is refused; --resume of a finished one has nothing to do.
    capsys.readouterr()
    assert cli.main(["sweep", "ndfa", "--seeds", "4", "--grid", "train.lr=0.001,0.003", "--run-dir", str(d)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_diverging_member_is_frozen_and_the_others_go_on(tmp_path):
    cfg = sg.config("brackets", **SMALL, **{"train.clip": 1e30})
    rep = sg.sweep(cfg, {"train.lr": [0.003, 3e38]}, seeds=1, run_dir=tmp_path / "sw", log=lambda s: None)
    by = {r["name"]: r for r in rep["ranked"]}
    assert by["lr=3e+38-seed=0"]["diverged_at_step"] is not None
    assert by["lr=0.003-seed=0"]["diverged_at_step"] is None
    ok = _last(tmp_path / "sw" / "lr=0.003-seed=0")
    assert len(ok) == 2 and all(math.isfinite(r["val_ce_bits_per_token"]) for r in ok)
    bad = sg.load(tmp_path / "sw" / "lr=3e+38-seed=0")  # frozen at its last finite state
    assert all(math.isfinite(float(x.sum())) for x in __import__("jax").tree.leaves(bad.params))


def test_members_group_by_shape_and_bad_grids_are_refused():
    cfg = sg.config("brackets", **SMALL)
    ms = plan_members(cfg, {"train.lr": [0.01, 0.02], "model.hidden": [8, 16]}, 2)
    assert len(ms) == 8 and len({group_key(c) for _, c, _ in ms}) == 2
    for grid, seeds in (({"train.seed": [1, 2]}, 1), ({"train.lr": []}, 1), ({"train.lr": [0.1, 0.1]}, 1),
                        ({"model.nope": [1]}, 1), ({}, 0)):
        with pytest.raises(UserError):
            plan_members(cfg, grid, seeds)


def test_an_oversized_sweep_is_refused_naming_a_size_that_fits(tmp_path, monkeypatch):
    from seqgen_jax import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 200 * 2 ** 20)
    cfg = sg.config("brackets", **{**SMALL, "model.hidden": 512, "model.embed": 512})
    with pytest.raises(UserError, match=r"at most \d+ members"):
        sg.sweep(cfg, {}, seeds=64, run_dir=tmp_path / "sw", log=lambda s: None)


def test_a_sweep_killed_between_its_members_checkpoints_resumes(tmp_path, capsys):
    """One member saved an epoch's end, the other not yet (the kill fell between them): --resume rolls
    the member ahead back and both finish every epoch."""
    import shutil

    from seqgen_jax import cli

    d = tmp_path / "sw"
    args = ["sweep", "brackets", "--seeds", "2", "--run-dir", str(d), "--epochs", "2", "--n-train", "300",
            "--n-val", "50", "--n-test", "50", "--embed", "8", "--hidden", "8", "--set", "train.eval_samples=5"]
    assert cli.main(args) == 0
    behind = d / "seed=0"
    last = max((p for p in (behind / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    shutil.rmtree(last)
    lines = (behind / "metrics.jsonl").read_text().splitlines()
    (behind / "metrics.jsonl").write_text("\n".join(l for l in lines if '"epoch": 2' not in l) + "\n")
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    for m in ("seed=0", "seed=1"):
        assert [r["epoch"] for r in _last(d / m)] == [1, 2]
    assert "resumed from step" in capsys.readouterr().out


def test_grid_refusals_name_the_grid(capsys):
    from seqgen_jax import cli

    assert cli.main(["sweep", "brackets", "--run-dir", "/nonexistent/x", "--grid", "train.lr=0.01,abc"]) == 2
    assert "--grid train.lr=abc" in capsys.readouterr().err
    assert cli.main(["sweep", "brackets", "--run-dir", "/nonexistent/x", "--grid", "data.name=ndfa,toy"]) == 2
    assert "one dataset" in capsys.readouterr().err
