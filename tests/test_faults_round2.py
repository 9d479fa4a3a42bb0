"""Issue "Nothing lost, nothing crashes, round two": each reproduction of the hostile-user run gives one
line and exit code 2 with nothing lost, or the right result. In-process (`cli.main`) where a fresh
process proves nothing extra."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import seqgen_jax as sg
from seqgen_jax import cli
from conftest import ROOT, one_line_error as one_line

T = ["--epochs", "1", "--embed", "8", "--hidden", "16"]
LANG = ["--n-train", "300", "--n-val", "50", "--n-test", "50", "--max-tokens", "2000"]


def main(capsys, *args):
    """`seqgen ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    f = d / "input.txt"
    f.write_text("\n".join(" ".join(rng.choice(words, size=5)) for _ in range(300)) + "\n")
    return f


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, corpus):
    run = tmp_path_factory.mktemp("textrun") / "r"
    cfg = sg.config(f"text:{corpus}", **{"train.epochs": 1, "model.embed": 8, "model.hidden": 16,
                                         "train.max_tokens": 256, "data.chunk": 16})
    sg.train(cfg, run, log=lambda s: None)
    return run


@pytest.fixture(scope="module")
def lang_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("langrun") / "r"
    cfg = sg.config("brackets", **{"train.epochs": 1, "model.embed": 8, "model.hidden": 16, "data.n_train": 300,
                                   "data.n_val": 50, "data.n_test": 50, "train.max_tokens": 2000,
                                   "train.eval_samples": 10})
    sg.train(cfg, run, log=lambda s: None)
    return run


# 1. data loss
@pytest.mark.parametrize("name", ["metrics.jsonl", "vocab.json"])
def test_a_directory_with_only_the_users_file_of_a_run_name_is_refused(capsys, tmp_path, corpus, name):
    d = tmp_path / "d"
    d.mkdir()
    (d / name).write_text("my results\n")
    one_line(*main(capsys, "train", f"text:{corpus}", "--run-dir", d, *T), "not empty", name)
    assert [p.name for p in d.iterdir()] == [name] and (d / name).read_text() == "my results\n"


# 2.
def test_eval_every_on_a_text_corpus_records_and_plots(capsys, tmp_path, corpus):
    run = tmp_path / "r"
    rc, out, err = main(capsys, "train", f"text:{corpus}", "--run-dir", run, *T, "--eval-every", "2",
                        "--max-tokens", "128", "--chunk", "16")
    assert rc == 0, err
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    mid = [r for r in recs if "val_ce_bits_per_token" in r and "epoch" not in r]
    assert mid and all(r["step"] % 2 == 0 for r in mid)
    assert (run / "loss.png").exists()


# 3.
def test_a_damaged_text_cache_is_rebuilt_with_a_warning(capsys, tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("SEQGEN_TEXT_CACHE", str(tmp_path / "cache"))
    rc, good, _ = main(capsys, "data", f"text:{corpus}", "--stats", "--json")
    assert rc == 0
    (key,) = list((tmp_path / "cache").iterdir())
    meta = json.loads((key / "meta.json").read_text())
    meta["symbols"] = meta["symbols"][:2]  # shortened: ids would point past it
    (key / "meta.json").write_text(json.dumps(meta))
    rc, out, err = main(capsys, "data", f"text:{corpus}", "--stats", "--json")
    assert rc == 0 and "damaged" in err and json.loads(out) == json.loads(good)
    ids = np.load(key / "ids.npy")
    ids[10:20] = ids[30:40][::-1] if (ids[10:20] != ids[30:40][::-1]).any() else ids[10:20] + 1
    np.save(key / "ids.npy", ids)  # same length, other bytes
    rc, out, err = main(capsys, "data", f"text:{corpus}", "--stats", "--json")
    assert rc == 0 and "damaged" in err and json.loads(out) == json.loads(good)


# 4, 5, 10.
@pytest.mark.parametrize("spec,body,needle", [
    ("pcfg", "S -> '.end' S [0.5] | 'x' [0.5]\n", "special"),
    ("pfsa", {"start": "q0", "states": {"q0": {"final": 0.5, "arcs": [[".end", "q0", 0.5]]}}}, "special"),
    ("pfsa", {"start": ["q0"], "states": {"q0": {"final": 1.0, "arcs": []}}}, "start"),
    ("pfsa", {"start": "q0", "states": {"q0": {"final": 1.0, "arcs": None}}}, "arcs"),
    ("pfsa", {"start": "q0", "states": {"q0": {"final": 1.0, "arcs": 5}}}, "arcs"),
    ("pfsa", {"start": "q0", "states": {"q0": {"final": 0.5, "arcs": [["a\nb", "q0", 0.5]]}}}, "whitespace"),
    ("pfsa", {"start": "q0", "states": {"q0": {"final": 0.5, "arcs": [["a\tb", "q0", 0.5]]}}}, "whitespace"),
])
def test_bad_user_languages_are_one_line(capsys, tmp_path, spec, body, needle):
    f = tmp_path / ("g.cfg" if spec == "pcfg" else "a.json")
    f.write_text(body if isinstance(body, str) else json.dumps(body))
    one_line(*main(capsys, "data", f"{spec}:{f}", "--stats"), needle)


# 6.
@pytest.mark.parametrize("spec,body,needle", [
    ("pcfg", "S -> S S [0.4999] | 'a' [0.5001]\n", "standard deviation"),
    ("pfsa", {"start": "q0", "states": {"q0": {"final": 1e-6, "arcs": [["a", "q0", 0.999999]]}}}, "999,999"),
])
def test_languages_of_huge_strings_are_refused_at_once(capsys, tmp_path, spec, body, needle):
    f = tmp_path / ("g.cfg" if spec == "pcfg" else "a.json")
    f.write_text(body if isinstance(body, str) else json.dumps(body))
    one_line(*main(capsys, "data", f"{spec}:{f}", "--stats"), needle)
    one_line(*main(capsys, "train", f"{spec}:{f}", "--run-dir", tmp_path / "r", "--n-train", "2000"), needle)
    assert not (tmp_path / "r").exists()


def test_length_moments_match_sampling():
    from seqgen_jax.data.pcfg import PCFG, length_moments

    g = PCFG(text="S -> S S [0.3] | 'a' [0.4] | 'b' S [0.3]\n")
    mean, sd = length_moments([(l, r, p, 0) for l, r, p in g.rules], g.start)
    lens = np.array([len(s) for s in g.strings(40_000, 3)])
    assert mean == pytest.approx(lens.mean(), rel=0.03) and sd == pytest.approx(lens.std(), rel=0.1)


# 7, 12, 13, 14.
@pytest.mark.parametrize("args,needle", [
    (["--set", "train.keep=-1"], "train.keep"),
    (["--set", "train.keep=0"], "train.keep"),
    (["--set", "train.max_buckets=0"], "max_buckets"),
    (["--set", "train.eval_samples=-5"], "eval_samples"),
    (["--set", "train.devices=abc"], "--devices"),
    (["--unroll", "-1"], "--unroll"),
    (["--set", "model.unroll=-3"], "--unroll"),
    (["--max-tokens", "10", "--chunk", "64"], "--chunk"),
    (["--run-dir", ""], "--run-dir"),
])
def test_settings_from_any_route_are_checked_before_training(capsys, tmp_path, args, needle):
    run = tmp_path / "r"
    argv = ["train", "brackets", *T, *LANG] + (["--run-dir", run] if "--run-dir" not in args else []) + args
    one_line(*main(capsys, *argv), needle)
    assert not run.exists()


# 8.
def test_a_changed_corpus_is_refused_for_eval_and_resume(capsys, tmp_path, corpus, text_run):
    import shutil

    f = tmp_path / "input.txt"
    shutil.copy(corpus, f)
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["name"] = f"text:{f}"
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(capsys, "eval", run, "--json", "--samples", "2", "--max-len", "20")[0] == 0
    with open(f, "a") as fh:
        fh.write("zeta eta theta\n")  # appended text, and new symbols
    before = (run / "metrics.jsonl").read_text()
    one_line(*main(capsys, "eval", run, "--json", "--samples", "2", "--max-len", "20"), "changed",
             "--allow-changed-corpus")
    one_line(*main(capsys, "train", f"text:{f}", "--run-dir", run, "--resume", "--epochs", "2"), "changed")
    assert (run / "metrics.jsonl").read_text() == before
    rc, out, _ = main(capsys, "eval", run, "--json", "--samples", "2", "--max-len", "20", "--allow-changed-corpus")
    assert rc == 0 and json.loads(out)["bits_per_char"] is not None


# 9, 19.
def test_config_file_cannot_change_the_dataset_and_sections_must_be_objects(capsys, tmp_path, corpus):
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"data": {"name": "ndfa"}}))
    one_line(*main(capsys, "train", f"text:{corpus}", "--run-dir", tmp_path / "r", *T, "--config", c), "ndfa")
    c.write_text(json.dumps({"model": 5}))
    one_line(*main(capsys, "train", "brackets", "--run-dir", tmp_path / "r", *T, "--config", c), "must be an object")
    assert not (tmp_path / "r").exists()


# 11, 16.
def test_the_python_api_checks_its_arguments(lang_run):
    run = sg.load(lang_run)
    cases = [dict(n=2.5), dict(n="3"), dict(prompt=None), dict(prompt=123), dict(seed=2 ** 70), dict(seed=None),
             dict(n=0), dict(temperature=-1.0), dict(max_len=0)]
    for kw in cases:
        name = next(iter(kw))
        with pytest.raises((TypeError, ValueError), match=name):
            run.sample(**kw)
    with pytest.raises(TypeError, match="list of strings"):
        run.log_prob("(())")
    with pytest.raises(TypeError, match=r"strings\[0\]"):
        run.log_prob([None])
    assert len(run.log_prob(["(())", "()"])) == 2


# 15.
def test_a_closed_pipe_is_not_reported_as_a_full_disk(tmp_path):
    lines = tmp_path / "big.txt"
    lines.write_text("ab\n" * 20_000)
    p = subprocess.run(f"{sys.executable} -m seqgen_jax score pfsa:{ROOT}/experiments/languages/even_ab.json "
                       f"{lines} --json | head -c 200 > /dev/null; exit ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "free space" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 141), p.returncode


# 17.
def test_run_files_honour_the_umask(tmp_path):
    from seqgen_jax.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "config.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o644


# 18.
def test_orphans_of_a_killed_cache_build_are_removed(capsys, tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("SEQGEN_TEXT_CACHE", str(tmp_path / "cache"))
    assert main(capsys, "data", f"text:{corpus}", "--stats")[0] == 0
    (key,) = list((tmp_path / "cache").iterdir())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = key / f".ids-{dead.pid}.npy"
    orphan.write_bytes(b"x" * 1000)
    (key / "meta.json").unlink()  # the next build rewrites the cache
    assert main(capsys, "data", f"text:{corpus}", "--stats")[0] == 0
    assert not orphan.exists()


# 20.
def test_special_files_bom_and_help(capsys, tmp_path):
    one_line(*main(capsys, "data", "text:/dev/null", "--stats"), "not a regular file")
    f = tmp_path / "bom.txt"
    f.write_bytes(("\ufeff" + "hello world\n" * 50).encode("utf-8"))
    rc, out, _ = main(capsys, "data", f"text:{f}", "--stats", "--json")
    plain = tmp_path / "plain.txt"
    plain.write_bytes("hello world\n".encode("utf-8") * 50)
    rc2, out2, _ = main(capsys, "data", f"text:{plain}", "--stats", "--json")
    assert rc == rc2 == 0
    # The BOM is dropped once per file, not kept as a symbol.
    assert json.loads(out)["vocab_size"] == json.loads(out2)["vocab_size"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "default 64" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_length_ranges_are_refused_for_text(capsys, tmp_path, corpus):
    one_line(*main(capsys, "train", f"text:{corpus}", "--run-dir", tmp_path / "r", *T, "--train-lengths", "1-4"),
             "languages")
    assert not (tmp_path / "r").exists()


def test_printed_eval_and_sample_of_a_text_run(capsys, text_run):
    """Without --json, as a newcomer runs them first (the intervals and per-temperature dicts print)."""
    rc, out, err = main(capsys, "eval", text_run, "--samples", "3", "--max-len", "30")
    assert rc == 0 and "Traceback" not in err and "bits_per_char:" in out and "repetition_rate: T=" in out, err
    rc, out, err = main(capsys, "sample", text_run, "--n", "2", "--max-len", "30")
    assert rc == 0 and out.strip(), err


@pytest.mark.parametrize("route", ["train", "sweep"])
def test_a_run_that_fails_releases_its_lock(tmp_path, monkeypatch, route):
    """An exception's traceback keeps the failing frame alive (pytest, a notebook, sys.last_traceback);
    a lock held by a name in that frame would make the user's retry in the same process "in use"."""
    import seqgen_jax.sweeps as S
    import seqgen_jax.train as T
    from seqgen_jax.run import RunDir

    def boom(*a, **k):
        raise RuntimeError("boom after the lock was taken")

    cfg = sg.config("brackets", **{"model.hidden": 8, "model.embed": 4, "train.epochs": 1,
                                   "data.n_train": 50, "data.n_val": 10, "data.n_test": 10})
    d = tmp_path / "r"
    if route == "train":  # a resumed run: its directory stays when the retry fails
        sg.train(cfg, run_dir=d, log=lambda s: None)
    monkeypatch.setattr(T, "build_cohort", boom)
    with pytest.raises(RuntimeError, match="boom") as failed:
        if route == "train":
            sg.train(cfg.override(**{"train.epochs": 2}), run_dir=d, resume=True, log=lambda s: None)
        else:
            S.sweep(cfg, seeds=2, run_dir=d, log=lambda s: None)
    assert failed.traceback  # the frames are still referenced here
    held = [d] if route == "train" else [d, *(p for p in d.iterdir() if (p / ".lock").exists())]
    assert len(held) == (1 if route == "train" else 3)
    for p in held:
        RunDir(p).lock().close()  # raises "in use by another seqgen process" while the lock is held
