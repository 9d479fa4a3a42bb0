"""The `seqgen` commands end to end, and their one-line errors."""
import json

import pytest

from seqgen_jax.data import Brackets

from conftest import run_cli


def _one_line_error(rc, out, err):
    assert rc == 2, (rc, out, err)
    lines = [l for l in err.strip().splitlines() if not l.startswith(("E1", "W1", "I1"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_data_stats_score_baseline(tmp_path):
    rc, out, _ = run_cli("data", "brackets", "--stats", "--json")
    d = json.loads(out)
    assert rc == 0 and d["exact"] and abs(d["entropy_bits_per_token"] - 0.790960) < 1e-6
    for k in ("entropy_bits_per_string", "tokens_per_string", "stderr_bits_per_token", "mean_length",
              "max_length_seen", "alphabet"):
        assert k in d
    f = tmp_path / "s.txt"
    rc, _, _ = run_cli("data", "ndfa", "--n", "5", "--course", "--out", f)
    assert rc == 0 and f.read_text().splitlines()[0] == "ss"
    f.write_text("ss\nsabc!s\nsab!s\n")
    rc, out, _ = run_cli("score", "ndfa", f, "--json")
    d = json.loads(out)
    assert d["n"] == 3 and d["valid_rate"] == pytest.approx(2 / 3)
    assert [l["valid"] for l in d["lines"]] == [True, True, False] and d["lines"][0]["log2_prob"] == -2.0
    rc, out, _ = run_cli("baseline", "brackets", "--order", "1", "--n-train", "20000", "--json")
    assert rc == 0 and abs(json.loads(out)["bits_per_char"] - 1.134) < 0.02


def test_bad_input_is_one_line_exit_2(tmp_path):
    cases = [
        ("data", "nope", "--stats"),
        ("score", "toy", tmp_path / "missing.txt"),
        ("baseline", "ndfa", "--order", "-1"),
        ("train", "nope", "--run-dir", tmp_path / "r"),
        ("train", "brackets", "--lr", "0", "--run-dir", tmp_path / "r"),
        ("train", "brackets", "--max-tokens", "0", "--run-dir", tmp_path / "r"),
        ("train", "brackets", "--clip", "-1", "--run-dir", tmp_path / "r"),
        ("train", "brackets", "--epochs", "0", "--run-dir", tmp_path / "r"),
        ("train", "brackets", "--max-time", "soon", "--run-dir", tmp_path / "r"),
        ("train", "brackets", "--resume", "--run-dir", tmp_path / "missing"),
        ("sample", tmp_path / "missing"),
        ("eval", tmp_path / "missing"),
    ]
    for args in cases:
        msg = _one_line_error(*run_cli(*args))
        assert "error" in msg, args


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "b"
    rc, out, err = run_cli("train", "brackets", "--run-dir", run, "--n-train", "3000", "--n-val", "300",
                           "--n-test", "300", "--epochs", "2", "--hidden", "16", "--max-tokens", "2000")
    assert rc == 0, err
    assert "packed feed" in out and "compiled 1 shape(s)" in out and "epoch 2/2" in out
    return run


def test_train_sample_eval_and_restore_in_new_process(trained_run, tmp_path):
    run = trained_run
    rc, out, _ = run_cli("sample", run, "--n", "5", "--temperature", "0", "--format", "jsonl", "--seed", "1")
    rows = [json.loads(l) for l in out.splitlines()]
    assert rc == 0 and len(rows) == 5 and all({"text", "ended", "valid", "log2_prob"} <= set(r) for r in rows)
    rc2, out2, _ = run_cli("sample", run, "--n", "5", "--temperature", "1", "--seed", "7")
    rc3, out3, _ = run_cli("sample", run, "--n", "5", "--temperature", "1", "--seed", "7")
    assert rc2 == rc3 == 0 and out2 == out3 and len(out2.splitlines()) == 5
    rc, out, err = run_cli("eval", run, "--split", "test", "--samples", "100", "--temperatures", "0,1",
                           "--max-len", "300", "--json")
    assert rc == 0, err
    d = json.loads(out)
    for k in ("ce_bits_per_token", "perplexity", "n_tokens", "split", "entropy_bits_per_token", "kl_bits_per_token",
              "valid_rate", "unterminated_rate", "prefix_valid_rate", "length_tv", "novel_rate",
              "best_ngram_bits_per_token"):
        assert k in d, k
    assert set(d["valid_rate"]) == {"0.0", "1.0"} and d["split"] == "test"
    assert d["kl_bits_per_token"] == pytest.approx(d["ce_bits_per_token"] - d["entropy_bits_per_token"], abs=1e-9)
    assert d["perplexity"] == pytest.approx(2 ** d["ce_bits_per_token"], rel=1e-9)
    assert d["ce_bits_per_token"] > d["entropy_bits_per_token"] > 0.5  # brackets: about 0.79 bits/token
    assert d["n_tokens"] == sum(len(t) + 1 for t in Brackets().strings(300, 2))  # the test split: seed + 2
    for t in ("0.0", "1.0"):
        v, (lo, hi) = d["valid_rate"][t], d["valid_rate_ci"][t]
        assert 0 <= lo <= v <= hi <= 1 and 0 <= d["unterminated_rate"][t] <= 1 - v + 1e-12
    assert 0 <= d["prefix_valid_rate"] <= 1 and 0 <= d["length_tv"] <= 1

    # The logits of a process that restores the checkpoint equal the in-process restored parameters'.
    code = ("import sys, json, jax, jax.numpy as jnp; from seqgen_jax.run import RunDir; "
            "from seqgen_jax.model import apply; cfg, v, p, s = RunDir(sys.argv[1]).restore('latest'); "
            "l, _ = apply(p, jnp.asarray([[1, 4, 4, 5]]), cfg=cfg.model); print(json.dumps(l.tolist()))")
    import subprocess, sys
    outs = [subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True).stdout
            for _ in range(2)]
    from seqgen_jax.run import RunDir
    from seqgen_jax.model import apply
    import jax.numpy as jnp
    cfg, _, p, _ = RunDir(str(run)).restore("latest")
    here, _ = apply(p, jnp.asarray([[1, 4, 4, 5]]), cfg=cfg.model)
    import numpy as np
    np.testing.assert_allclose(np.array(json.loads(outs[0])), np.asarray(here), rtol=1e-6)
    assert outs[0] == outs[1]


def test_bad_sampling_and_checkpoint_input(trained_run, tmp_path):
    run = trained_run
    for args in (("--temperature", "-1"), ("--top-k", "0"), ("--n", "0"), ("--max-len", "0"),
                 ("--prompt", "ab"), ("--checkpoint", "999999"), ("--checkpoint", "soon")):
        _one_line_error(*run_cli("sample", run, *args))
    # Existing run without --resume is refused and left as it was.
    before = (run / "config.json").read_text()
    _one_line_error(*run_cli("train", "brackets", "--run-dir", run))
    assert (run / "config.json").read_text() == before
    # Resume with a changed model shape.
    _one_line_error(*run_cli("train", "brackets", "--run-dir", run, "--resume", "--hidden", "99"))
    # A run directory without checkpoints; a corrupt checkpoint.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    _one_line_error(*run_cli("sample", empty))
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    for f in (bad / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "params" in str(f):
            f.write_bytes(b"garbage")
    _one_line_error(*run_cli("sample", bad))
    # An unwritable run directory.
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    import os
    if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a regular file instead
        (tmp_path / "file").write_text("")
        ro = tmp_path / "file" / "run"
    _one_line_error(*run_cli("train", "brackets", "--run-dir", ro, "--n-train", "100", "--epochs", "1"))
