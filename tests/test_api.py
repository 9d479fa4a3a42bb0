"""The Python API: the README's example runs as written, and what it returns is checked against
independent computations (a direct forward pass, the language's truth)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import one_line_error, run_cli

import seqgen_jax as sg
from seqgen_jax.data.vocab import END_ID, START_ID
from seqgen_jax.errors import UserError
from seqgen_jax.model import apply

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_block() -> str:
    text = README.read_text()
    section = text[text.index("## In Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path):
    code = _readme_block()
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "runs" / "api-demo" / "config.json").exists()
    run = sg.load(tmp_path / "runs" / "api-demo", checkpoint="best")
    cfg = json.loads((tmp_path / "runs" / "api-demo" / "config.json").read_text())
    assert cfg["model"]["hidden"] == 32 and cfg["train"]["epochs"] == 3 and run.config.model.hidden == 32

    # log_prob against a forward pass written here: sum of log-softmax at each target, end included.
    strings = ["(())", "()", "(()())"]
    got = run.log_prob(strings)
    for s, g in zip(strings, got):
        ids = np.concatenate([[START_ID], run.vocab.encode(s), [END_ID]])
        logits, _ = apply(run.params, ids[None, :-1], None, cfg=run.config.model)
        lp = jax.nn.log_softmax(np.asarray(logits[0], np.float64))
        want = sum(lp[t, ids[t + 1]] for t in range(len(ids) - 1)) / np.log(2)
        assert g == pytest.approx(float(want), abs=1e-4)  # NumPy values: pytest.approx cannot read JAX arrays
    assert got[0] > -8  # a trained brackets model gives short balanced strings real probability

    texts = run.sample(n=40, temperature=1.0, prompt="((", max_len=300, seed=1)
    assert len(texts) == 40 and all(t.startswith("((") for t in texts)
    # The prompt conditions the model: after "((" a sample ends only where the depth returns to 0,
    # never earlier (an ignored prompt would end at depth 2), and some do end.
    depths = [np.cumsum([1 if c == "(" else -1 for c in t]) for t in texts]
    assert all(d[:-1].min() >= 1 and d[-1] >= 0 for d in depths)
    assert sum(d[-1] == 0 for d in depths) >= 10
    rep = run.evaluate(split="test", samples=200, temperatures=(1.0,), limit=500)
    assert rep["kl_bits_per_token"] == pytest.approx(rep["ce_bits_per_token"] - rep["entropy_bits_per_token"])
    assert 0 < rep["kl_bits_per_token"] < 0.2
    with pytest.raises(UserError, match="not in the vocabulary"):
        run.log_prob(["(x)"])


def test_set_and_config_flags(tmp_path):
    from seqgen_jax.cli import build_parser
    from seqgen_jax.cli_run import config_from_args

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"hidden": 48, "layers": 2}, "train": {"lr": 0.02}}))
    a = build_parser().parse_args(["train", "brackets", "--config", str(f), "--set", "model.hidden=40",
                                   "--set", "data.carry_state=false", "--set", "train.max_time=none", "--lr", "0.03"])
    cfg, given = config_from_args(a)
    assert (cfg.model.hidden, cfg.model.layers, cfg.train.lr, cfg.data.carry_state) == (40, 2, 0.03, False)
    assert cfg.model.embed == sg.config("brackets").model.embed  # untouched fields keep the preset
    # Durations as on the command line (what experiments/runner.py passes for a study's time limit).
    for text, seconds in (("30m", 1800.0), ("90s", 90.0), ("2h", 7200.0), ("45", 45.0)):
        a = build_parser().parse_args(["train", "brackets", "--set", f"train.max_time={text}"])
        assert config_from_args(a)[0].train.max_time == seconds
    for bad, msg in ((["--set", "model.hiden=3"], "unknown setting"), (["--set", "model.hidden=x"], "expected int"),
                     (["--set", "model.hidden"], "SECTION.FIELD=VALUE"),
                     (["--set", "train.max_time=soon"], "not a duration")):
        with pytest.raises(UserError, match=msg):
            config_from_args(build_parser().parse_args(["train", "brackets", *bad]))
    f.write_text(json.dumps({"model": {"hidden": "big"}}))
    # Types are checked once, where every route meets (train() and sweep()), so the CLI refuses it
    # before anything is written.
    rc, out, err = run_cli("train", "brackets", "--config", str(f), "--run-dir", str(tmp_path / "r"))
    one_line_error(rc, out, err, "is not int")
    assert not (tmp_path / "r").exists()
