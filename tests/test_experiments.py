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
