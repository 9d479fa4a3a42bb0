"""Hostile but fair input (issue "Nothing lost, nothing crashes"): each case gets one line on stderr,
exit code 2, no traceback, and leaves the user's files as they were."""
import fcntl
import json
import shutil
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli

TINY = ("--n-train", "300", "--n-val", "50", "--n-test", "50", "--embed", "8", "--hidden", "16", "--epochs", "1",
        "--max-tokens", "2000")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    r = tmp_path_factory.mktemp("faults") / "run"
    rc, out, err = run_cli("train", "brackets", "--run-dir", r, *TINY)
    assert rc == 0, err
    return r


def _copy(run, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def test_a_directory_that_is_not_a_run_is_never_overwritten(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "metrics.jsonl").write_text("mine\n")
    (d / "notes.txt").write_text("keep me\n")
    one_line_error(*run_cli("train", "brackets", "--run-dir", d, *TINY), "not empty", "notes.txt")
    assert (d / "metrics.jsonl").read_text() == "mine\n" and sorted(p.name for p in d.iterdir()) == ["metrics.jsonl", "notes.txt"]
    f = tmp_path / "afile"
    f.write_text("x")
    one_line_error(*run_cli("train", "brackets", "--run-dir", f, *TINY), "is a file")


def test_a_rejected_run_leaves_no_directory(tmp_path):
    d = tmp_path / "new"
    one_line_error(*run_cli("train", "brackets", "--run-dir", d, "--hidden", "900000", "--epochs", "1",
                            "--n-train", "100"), "GiB", "--hidden")
    assert not d.exists()


def test_a_run_in_use_is_refused(run, tmp_path):
    c = _copy(run, tmp_path)
    before = (c / "metrics.jsonl").read_text()
    with open(c / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        one_line_error(*run_cli("train", "brackets", "--run-dir", c, "--resume", "--epochs", "2"), "in use")
    assert (c / "metrics.jsonl").read_text() == before


def test_flags_that_used_to_pass_validation_and_crash(run, tmp_path):
    r = tmp_path / "r"
    cases = [
        (("train", "brackets", "--run-dir", r, "--log-every", "0"), "--log-every"),
        (("train", "brackets", "--run-dir", r, "--log-every", "-1"), "--log-every"),
        (("train", "brackets", "--run-dir", r, "--seed", "-1"), "--seed"),
        (("train", "brackets", "--run-dir", r, "--seed", "18446744073709551616"), "--seed"),
        (("train", "brackets", "--run-dir", r, "--n-test", "0"), "--n-test"),
        (("train", "brackets", "--run-dir", r, "--lr", "inf"), "finite"),
        (("train", "brackets", "--run-dir", r, "--num-processes", "2", "--process-id", "5"), "--coordinator"),
        (("train", "brackets", "--run-dir", r, "--coordinator", "nohost:notaport"), "host:port"),
        (("sample", run, "--temperature", "inf"), "finite"),
        (("sample", run, "--n", "1000000000"), "GiB"),
        (("sample", run, "--max-len", "1000000000"), "GiB"),
        (("eval", run, "--temperatures", "inf"), "finite"),
        (("eval", run, "--samples", "0"), "--samples"),
        (("baseline", "brackets", "--order", "2", "--alpha", "-1"), "--alpha"),
        (("baseline", "brackets", "--order", "2", "--alpha", "nan"), "--alpha"),
        (("data", "brackets", "--n", "5", "--out", tmp_path), "is a directory"),
        (("data", "brackets", "--n", "5", "--out", "/proc/nope/x.txt"), "/proc/nope"),
    ]
    for args, needle in cases:
        one_line_error(*run_cli(*args), needle)
    assert not r.exists()


def test_resume_refuses_what_differs_and_records_new_epochs(run, tmp_path):
    c = _copy(run, tmp_path)
    one_line_error(*run_cli("train", "ndfa", "--run-dir", c, "--resume"), "brackets")
    one_line_error(*run_cli("train", "brackets", "--run-dir", c, "--resume", "--lr", "0.5", "--clip", "1"),
                   "--lr", "--clip")
    rc, out, err = run_cli("train", "brackets", "--run-dir", c, "--resume", "--epochs", "2")
    assert rc == 0, err
    assert json.loads((c / "config.json").read_text())["train"]["epochs"] == 2
    epochs = [json.loads(l)["epoch"] for l in (c / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
    assert epochs == [1, 2]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_zero(run, tmp_path):
    c = _copy(run, tmp_path)
    shutil.rmtree(c / "checkpoints")
    shutil.rmtree(c / "best", ignore_errors=True)
    (c / "metrics.jsonl").write_text("")
    rc, out, err = run_cli("train", "brackets", "--run-dir", c, "--resume")
    assert rc == 0, err
    assert "step 0" in out + err
    assert [json.loads(l).get("epoch") for l in (c / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l] == [1]


def test_divergence_stops_with_one_line_and_valid_json(tmp_path):
    d = tmp_path / "div"
    one_line_error(*run_cli("train", "brackets", "--run-dir", d, *TINY[:-2], "--max-tokens", "400", "--lr", "3e38",
                            "--schedule", "constant", "--log-every", "1"), "diverged", "--lr")
    for line in (d / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # never a bare NaN
        assert "NaN" not in line
    assert not (d / "checkpoints").exists() or not any((d / "checkpoints").iterdir())


@pytest.mark.parametrize("content", ["[1, 2, 3]", "null", '{"schema_version": 1}', "\udcff"])
def test_damaged_config_json(run, tmp_path, content):
    c = _copy(run, tmp_path)
    if content == "\udcff":
        (c / "config.json").write_bytes(b"\xff\xfe not utf-8")
    else:
        (c / "config.json").write_text(content)
    one_line_error(*run_cli("sample", c), "config.json")


def test_wrongly_typed_config_field(run, tmp_path):
    c = _copy(run, tmp_path)
    cfg = json.loads((c / "config.json").read_text())
    cfg["model"]["hidden"] = "16"
    (c / "config.json").write_text(json.dumps(cfg))
    one_line_error(*run_cli("sample", c), "hidden")


def test_damaged_or_missing_vocab(run, tmp_path):
    c = _copy(run, tmp_path)
    (c / "vocab.json").unlink()
    one_line_error(*run_cli("sample", c), "vocab.json")
    (c / "vocab.json").write_text("{not json")
    one_line_error(*run_cli("sample", c), "vocab.json")


def test_run_argument_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    one_line_error(*run_cli("sample", f), "not a run directory")


def test_eval_on_a_read_only_run_still_reports(monkeypatch, tmp_path):
    """The truth cache is a convenience: when the run directory cannot be written, the figures are
    computed and returned all the same."""
    from seqgen_jax import evaluate as ev
    from seqgen_jax.config import DataConfig
    from seqgen_jax.data import build_dataset
    from seqgen_jax.run import RunDir

    def refuse(path, obj):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(ev, "atomic_write_json", refuse)
    ds = build_dataset(DataConfig(name="brackets", n_train=200, n_val=50, n_test=80))
    info = ev.truth_info(ds, "test", RunDir(tmp_path), limit=40, seed=1)
    assert info["floor_bits_per_token"] == pytest.approx(ds.language.entropy().bits_per_token)
    assert info["split_tokens"] == sum(len(ds.strings("test")[i]) + 1 for i in ds.subset("test", 40, 1))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    r = tmp_path_factory.mktemp("faults2") / "run"
    rc, out, err = run_cli("train", "brackets", "--run-dir", r, *TINY[:-4], "--epochs", "2", "--max-tokens", "2000")
    assert rc == 0, err
    return r


def _steps(d):
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(run2, tmp_path):
    c = _copy(run2, tmp_path)
    newest = max(_steps(c / "checkpoints"))
    for f in (c / "checkpoints" / str(newest)).rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "params" in str(f):
            f.write_bytes(b"garbage")
    rc, out, err = run_cli("sample", c, "--n", "3")
    assert rc == 0, err
    assert f"checkpoint {newest}" in err and "using the previous one" in err and "Traceback" not in err
    assert len(out.splitlines()) == 3


def test_resume_from_a_checkpoint_older_than_best(run2, tmp_path):
    c = _copy(run2, tmp_path)
    steps = _steps(c / "checkpoints")
    shutil.rmtree(c / "checkpoints" / str(max(steps)))  # as the corrupt-checkpoint message invites
    best_before = _steps(c / "best")
    rc, out, err = run_cli("train", "brackets", "--run-dir", c, "--resume")
    assert rc == 0, err[-2000:]
    assert max(_steps(c / "checkpoints")) == max(steps) and _steps(c / "best")
    assert f"resumed from step {min(steps)}" in out and best_before


def test_an_empty_best_folder_names_the_other_choice(run2, tmp_path):
    c = _copy(run2, tmp_path)
    for p in (c / "best").iterdir():
        shutil.rmtree(p)
    one_line_error(*run_cli("sample", c, "--checkpoint", "best"), "--checkpoint latest")


def test_wrongly_typed_checkpoint_meta_counts_as_corrupt(run2, tmp_path):
    c = _copy(run2, tmp_path)
    newest = max(_steps(c / "checkpoints"))
    (c / "checkpoints" / str(newest) / "meta" / "metadata").write_text('{"epoch": "two", "batch": null, "best_val": "x"}')
    rc, out, err = run_cli("train", "brackets", "--run-dir", c, "--resume", "--epochs", "3")
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert "meta item is damaged" in err and f"resumed from step {min(_steps(c / 'checkpoints'))}" in out
    epochs = [json.loads(l)["epoch"] for l in (c / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
    assert epochs == [1, 2, 3]


def test_metrics_jsonl_that_is_a_directory(run, tmp_path):
    c = _copy(run, tmp_path)
    (c / "metrics.jsonl").unlink()
    (c / "metrics.jsonl").mkdir()
    one_line_error(*run_cli("train", "brackets", "--run-dir", c, "--resume", "--epochs", "3"),
                   "metrics.jsonl is a directory")


def _du_kb(path) -> int:
    """What a copy takes on a tmpfs: whole 4 KiB pages per file, and a little per folder."""
    kb = 0
    for p in Path(path).rglob("*"):
        kb += 4 * -(-p.stat().st_size // 4096) if p.is_file() else 4
    return kb


def test_a_full_disk_during_training_is_one_line_and_resumable(run, tmp_path):
    """A tmpfs just larger than the run: the next epoch's checkpoint or plots cannot be written."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    size_kb = _du_kb(run) + 128
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here ({p.stderr.decode().strip()[:80]}); the disk-full "
                    "case needs it")
    try:
        c = _copy(run, mnt)
        rc, out, err = run_cli("train", "brackets", "--run-dir", c, "--resume", "--epochs", "6")
        one_line_error(rc, out, err, "the disk is full", "--resume")
        left = [q.name for q in c.rglob("*") if "tmp" in q.name]
        assert left == [], left
        subprocess.run(["mount", "-o", f"remount,size={size_kb * 8}k", str(mnt)], check=True)
        rc, out, err = run_cli("train", "brackets", "--run-dir", c, "--resume", "--epochs", "6")
        assert rc == 0, err[-2000:]
        epochs = [json.loads(l)["epoch"] for l in (c / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
        assert epochs == list(range(1, 7))
    finally:
        # Lazy: detached even while this process still holds a file there (orbax's threads, logs).
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_the_one_resume_rule(run, tmp_path):
    """`RunDir.resume_config`: what a library call and the CLI may change on resume, and what not."""
    from seqgen_jax.errors import UserError
    from seqgen_jax.run import RunDir

    rd = RunDir(_copy(run, tmp_path))
    saved = rd.load_config()
    # A library call passes a whole config: model and data must match; the length comes from it.
    longer = saved.override(**{"train.epochs": saved.train.epochs + 3, "train.lr": 0.5})
    got = rd.resume_config(longer)
    assert got.train.epochs == saved.train.epochs + 3 and got.train.lr == saved.train.lr
    with pytest.raises(UserError, match="model.hidden"):
        rd.resume_config(saved.override(**{"model.hidden": saved.model.hidden + 1}))
    with pytest.raises(UserError, match="trains 'brackets'"):
        rd.resume_config(saved.override(**{"data.name": "ndfa"}))
    # The CLI names what the user gave: other fields keep the run's values, the epochs included.
    preset = saved.override(**{"train.epochs": 99, "train.lr": 0.123, "model.hidden": 7})
    got = rd.resume_config(preset, given=[])
    assert got == saved
    with pytest.raises(UserError, match="--lr"):
        rd.resume_config(preset, given=["train.lr"], name_of=lambda k: "--lr" if k == "train.lr" else k)
    assert rd.resume_config(preset, given=["train.epochs"]).train.epochs == 99


_LATE_WRITES = r"""
import asyncio, sys, time
import numpy as np
if sys.argv[1] == "seqgen":
    import seqgen_jax.checkpoint  # noqa: F401
import tensorstore as ts

class Loud:
    def __del__(self):
        raise ValueError("a different unraisable error")

async def start_writes(path):
    t = await ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": path}}, create=True,
                      dtype=ts.float32, shape=[4000, 2000], chunk_layout=ts.ChunkLayout(chunk_shape=[100, 100]))
    for i in range(40):  # left in flight: the loop closes before they end, as after orbax's failed save
        asyncio.ensure_future(t[i * 100:(i + 1) * 100].write(np.ones((100, 2000), np.float32)))
    await asyncio.sleep(0)

loop = asyncio.new_event_loop()
loop.run_until_complete(start_writes(sys.argv[2]))
loop.close()
time.sleep(2)
Loud()
"""


@pytest.mark.parametrize("importer", ["plain", "seqgen"])
def test_writes_that_end_after_their_loop_closed_print_nothing(importer, tmp_path):
    """The disk-full exit's stray tracebacks: tensorstore reports each write that ends after orbax's
    loop closed. Without seqgen_jax the script must print them (else it proves nothing); with it only
    the unrelated error is left."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _LATE_WRITES, importer, str(tmp_path / "z")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "a different unraisable error" in p.stderr
    late = p.stderr.count("RuntimeError: Event loop is closed")
    assert (late > 0) if importer == "plain" else (late == 0), p.stderr[-2000:]
