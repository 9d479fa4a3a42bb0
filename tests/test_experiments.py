"""The shared experiment runner: run directories, skipping finished configurations, summaries."""
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))

from runner import Study, main  # noqa: E402

TINY = {"model.embed": 8, "model.hidden": 8, "train.epochs": 1, "data.n_train": 400, "data.n_val": 50,
        "data.n_test": 50, "train.max_tokens": 1000}


def test_runner_trains_skips_and_summarises(tmp_path):
    study = Study(name="tiny", dataset="brackets", configs={"a": TINY, "b": {**TINY, "train.lr": 0.003}},
                  quick={"a": TINY}, quick_note="one configuration",
                  eval_args=("--samples", "20", "--temperatures", "0,1", "--max-len", "100"))
    main(study, ["--out", str(tmp_path), "--quick"])
    run = tmp_path / "tiny" / "a"
    assert (run / "config.json").exists() and (run / "loss.png").exists()
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert [r["config"] for r in summary["rows"]] == ["a"] and "kl_bits_per_token" in summary["rows"][0]
    assert "--quick" in (tmp_path / "tiny" / "summary.md").read_text()
    before = (run / "metrics.jsonl").read_text()
    main(study, ["--out", str(tmp_path), "--quick"])  # finished: evaluated again, not retrained
    assert (run / "metrics.jsonl").read_text() == before
    assert list((tmp_path / "tiny").glob("comparison_*.png"))


def test_runner_sweeps_learning_rates_and_seeds_in_one_program(tmp_path):
    """Configurations that differ only in the learning rate train as one sweep; with --seeds 2 each
    row is the mean of its two members and summary.md shows the spread."""
    from runner import groups_of

    cfgs = {"lo": {**TINY, "train.lr": 0.003}, "hi": {**TINY, "train.lr": 0.02}, "wide": {**TINY, "model.hidden": 12,
                                                                                      "train.lr": 0.02}}
    assert sorted(map(sorted, groups_of(cfgs, 1))) == [["hi", "lo"], ["wide"]]
    study = Study(name="grid", dataset="brackets", configs=cfgs, quick={k: cfgs[k] for k in ("lo", "hi")},
                  quick_note="two learning rates", eval_args=("--samples", "20", "--temperatures", "0,1", "--max-len", "100"))
    main(study, ["--out", str(tmp_path), "--quick", "--seeds", "2"])
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    rows = {r["config"]: r for r in summary["rows"]}
    assert set(rows) == {"lo", "hi"} and all(r["seeds"] == 2 and "kl_bits_per_token_std" in r for r in rows.values())
    (sweep_dir,) = [p for p in (tmp_path / "grid").iterdir() if (p / "sweep.json").exists()]
    assert len([p for p in sweep_dir.iterdir() if p.is_dir()]) == 4  # 2 learning rates x 2 seeds, one program
    assert rows["lo"]["members"] != rows["hi"]["members"]
    assert " ± " in (tmp_path / "grid" / "summary.md").read_text()
