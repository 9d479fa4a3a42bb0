"""The IMDb loader on the real archive and on small archives built here."""
import gzip
import io
import json
import pickle
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_IMDB, run_cli
from seqgen_jax.data import load_imdb
from seqgen_jax.data.imdb import ImdbOptions, load_corpus
from seqgen_jax.errors import UserError


def _archive(path, files: dict, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _small_files(n=6, unsup=True):
    files = {"aclImdb/README": b"readme"}
    for split in ("train", "test"):
        for pol in ("pos", "neg"):
            for i in range(n):
                r = 8 if pol == "pos" else 2
                files[f"aclImdb/{split}/{pol}/{i}_{r}.txt"] = f"{split} {pol} review {i}.<br /><br />Caf\u00e9!".encode()
    if unsup:
        files["aclImdb/train/unsup/0_0.txt"] = b"unlabelled"
    return files


def test_small_archive_splits_labels_and_options(tmp_path):
    src = _archive(tmp_path / "a.tar.gz", _small_files())
    (x_tr, y_tr), (x_va, y_va), (i2w, w2i), ncls = load_imdb(val=4, seed=3, char=True, path=src)
    assert ncls == 2 and len(x_tr) == 8 and len(x_va) == 4 and i2w[:4] == [".pad", ".start", ".end", ".unk"]
    assert sorted(y_tr + y_va) == [0] * 6 + [1] * 6
    text = "".join(i2w[i] for i in x_tr[0])
    assert "\n\n" in text and "<br />" not in text and "Caf\u00e9" in text
    (x_tr2, _), (x_va2, _), _, _ = load_imdb(val=4, seed=3, char=True, path=src)
    assert x_va2 == x_va  # the seed is honoured, the split deterministic
    (_, _), (x_va3, _), _, _ = load_imdb(val=4, seed=4, char=True, path=src)
    assert x_va3 != x_va
    x_te, _ = load_imdb(final=True, char=True, path=src)[1]
    assert len(x_te) == 12
    kept = load_corpus(src, ImdbOptions(keep_br=True))
    assert "<br />" in kept.vocab.decode(kept.train[0])
    small = load_imdb(voc=6, val=2, char=True, path=src)
    assert len(small[2][0]) == 6 and max(max(s) for s in small[0][0]) < 6
    words = load_imdb(char=False, val=2, path=src)
    assert "review" in words[2][0] and "unsup" not in words[2][0] and "unlabelled" not in words[2][0]
    # The extracted-folder layout gives the same corpus.
    with tarfile.open(src) as tf:
        tf.extractall(tmp_path / "x")
    a, b = load_corpus(src), load_corpus(tmp_path / "x")
    assert np.array_equal(a.train.flat, b.train.flat) and a.vocab == b.vocab


def test_bad_archives_give_clear_errors(tmp_path, monkeypatch):
    bad = _small_files(unsup=False)
    bad["aclImdb/train/pos/0_8.txt"] = b"\xff\xfe broken"
    cases = {
        "not valid UTF-8": _archive(tmp_path / "bad.tar.gz", bad),
        "holds no (empty)": _archive(tmp_path / "empty.tar.gz", {}),
        "holds no (foreign)": _archive(tmp_path / "foreign.tar.gz", {"other/file.txt": b"x"}),
    }
    (tmp_path / "not.tar.gz").write_bytes(b"this is not an archive")
    cases["not a readable tar"] = tmp_path / "not.tar.gz"
    for want, path in cases.items():
        with pytest.raises(UserError) as e:
            load_corpus(path)
        assert want.split(" (")[0] in str(e.value)
    # Damaged near its end: tarfile stops at the bad header without an error; the loader must notice.
    whole = _archive(tmp_path / "whole.tar", _small_files(n=10, unsup=False), mode="w")
    data = bytearray(whole.read_bytes())
    with tarfile.open(whole) as tf:
        members = tf.getmembers()
    at = members[len(members) * 3 // 4].offset  # a header block three quarters in
    data[at:at + 512] = b"\x07" * 512
    cut = tmp_path / "cut.tar"
    cut.write_bytes(bytes(data))
    with pytest.raises(UserError, match="incomplete or damaged"):
        load_corpus(cut)
    monkeypatch.delenv("SEQGEN_IMDB", raising=False)
    with pytest.raises(UserError, match="SEQGEN_IMDB"):
        load_corpus(None)
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(tmp_path / "nowhere.tar.gz")


def test_course_pickle_loads(tmp_path):
    i2w = [".pad", ".start", ".end", ".unk", "a", "b"]
    seqs = {"train": [[4, 5], [5], [4, 4, 4]], "test": [[5, 5]]}
    labels = {"train": [0, 1, 1], "test": [0]}
    p = tmp_path / "imdb.char.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump((seqs, labels, i2w, {w: i for i, w in enumerate(i2w)}), f)
    (x_tr, y_tr), (x_va, y_va), (i2w2, _), _ = load_imdb(val=1, path=p)
    assert i2w2 == i2w and len(x_tr) == 2 and len(x_va) == 1
    assert load_imdb(final=True, path=p)[1][0] == [[5, 5]]


def test_subsets_are_random_and_stratified_by_label(tmp_path):
    """The archive stores reviews sorted by label: training, test and `eval --limit` subsets must hold
    both classes in proportion, and depend on the seed."""
    from seqgen_jax.config import DataConfig
    from seqgen_jax.data import build_dataset

    src = _archive(tmp_path / "a.tar.gz", _small_files(n=20))
    ds = build_dataset(DataConfig(name="imdb", imdb=str(src), n_train=10, n_val=10, n_test=8, seed=0))
    labels = ds.info["labels"]
    assert len(ds.train) == 10 and len(ds.test) == 8
    assert sorted(labels["train"].tolist()) == [0] * 5 + [1] * 5  # 15 and 15 remain after val: half each
    assert sorted(labels["test"].tolist()) == [0] * 4 + [1] * 4
    # Each review's text names its class: the labels travel with the right reviews.
    for split in ("train", "test"):
        for i, lab in enumerate(labels[split]):
            assert ("pos" if lab == 1 else "neg") in ds.vocab.decode(ds.split(split)[i])
    other = build_dataset(DataConfig(name="imdb", imdb=str(src), n_train=10, n_val=10, n_test=8, seed=1))
    assert [ds.vocab.decode(ds.test[i]) for i in range(8)] != [other.vocab.decode(other.test[i]) for i in range(8)]
    pick = ds.subset("test", 4, seed=0)
    assert sorted(labels["test"][pick].tolist()) == [0, 0, 1, 1]
    assert list(ds.subset("test", None)) == list(range(8))


# CI runs with ../shared beside the checkout, so a missing archive there is a set-up failure, not a skip.
@pytest.mark.skipif(not SHARED_IMDB.exists() and not os.environ.get("CI"),
                    reason="the shared IMDb archive is not beside this checkout")
def test_real_archive_splits_and_cache(tmp_path):
    rc, out, err = run_cli("data", "imdb", "--imdb", SHARED_IMDB, "--stats", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert (d["n_train"], d["n_val"], d["n_test"]) == (20_000, 5_000, 25_000)
    assert d["n_chars_train"] > 20_000_000 and 100 < d["vocab_size"] < 400
    assert Path(d["cache"]).is_relative_to(os.environ["SEQGEN_CACHE"])  # the cache lives where it was told
    c = load_corpus(SHARED_IMDB)  # from the cache written by the command above
    assert c.cache == d["cache"] and isinstance(c.train.flat, np.memmap)
    assert int(c.labels["train"].sum()) == 12_500 and len(c.test) == 25_000


def test_a_damaged_cache_is_rebuilt_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEQGEN_CACHE", str(tmp_path / "cache"))
    src = _archive(tmp_path / "a.tar.gz", _small_files())
    good = load_corpus(src)
    cdir = Path(good.cache)
    good_flat = np.array(good.train.flat)  # a copy: the cache's memory map changes when its file does
    for damage in ("truncate", "vocab", "offsets"):
        if damage == "truncate":
            f = cdir / "train_flat.npy"
            f.write_bytes(f.read_bytes()[:-7])
        elif damage == "vocab":
            (cdir / "vocab.json").write_text("{not json")
        else:
            (cdir / "test_offsets.npy").unlink()
        again = load_corpus(src)
        assert "is damaged; rebuilding it" in capsys.readouterr().err
        assert np.array_equal(np.asarray(again.train.flat), good_flat) and again.vocab == good.vocab
        assert Path(again.cache) == cdir and (cdir / "test_offsets.npy").exists()


def test_empty_or_non_tar_file_is_one_line(tmp_path):
    for name, data in (("empty.tar.gz", b""), ("text.tar.gz", b"plain text, not a tar file\n" * 10)):
        (tmp_path / name).write_bytes(data)
        rc, out, err = run_cli("data", "imdb", "--stats", "--imdb", str(tmp_path / name))
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a readable tar archive" in err, err


def test_a_moved_archive_can_be_evaluated_and_resumed(tmp_path):
    src = _archive(tmp_path / "a.tar.gz", _small_files(n=8))
    run = tmp_path / "run"
    args = ["--embed", "8", "--hidden", "16", "--epochs", "1", "--n-train", "10", "--n-val", "4", "--n-test", "6",
            "--chunk", "16", "--max-tokens", "256"]
    rc, out, err = run_cli("train", "imdb", "--run-dir", run, "--imdb", "a.tar.gz", *args,
                           env={"SEQGEN_CACHE": str(tmp_path / "c")}, cwd=tmp_path)
    assert rc == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["imdb"] == str(src)  # stored absolute
    moved = tmp_path / "elsewhere.tar.gz"
    src.rename(moved)
    env = {"SEQGEN_CACHE": str(tmp_path / "c2")}
    ev = ["eval", run, "--json", "--samples", "4", "--temperatures", "1", "--max-len", "20"]
    rc, out, err = run_cli(*ev, "--imdb", moved, env=env)
    assert rc == 0, err
    rc, out2, err = run_cli(*ev, env={**env, "SEQGEN_IMDB": str(moved)})
    assert rc == 0, err
    assert json.loads(out)["bits_per_char"] == json.loads(out2)["bits_per_char"]
    rc, out, err = run_cli("train", "imdb", "--run-dir", run, "--resume", "--epochs", "2", "--imdb", moved, env=env)
    assert rc == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["imdb"] == str(moved)
    rc, out, err = run_cli(*ev, "--imdb", moved, env=env)
    assert rc == 0
    rc, out, err = run_cli("eval", run, "--imdb", moved / "x", env=env)
    assert rc == 2 and "does not exist" in err


def test_carried_state_and_scoring_every_test_review(tmp_path):
    """--carry-state trains the reviews as streams; eval scores whole reviews from a zero state (the
    figure equals a forward pass over each review written here), and --limit all scores every test
    review, beyond the run's --n-test."""
    import jax

    from seqgen_jax.data.vocab import END_ID, START_ID
    from seqgen_jax.model import apply
    from seqgen_jax.run import RunDir

    src = _archive(tmp_path / "a.tar.gz", _small_files(n=8))
    run = tmp_path / "run"
    env = {"SEQGEN_CACHE": str(tmp_path / "c")}
    rc, out, err = run_cli("train", "imdb", "--run-dir", run, "--imdb", src, "--embed", "8", "--hidden", "16",
                           "--epochs", "2", "--n-train", "10", "--n-val", "4", "--n-test", "6", "--chunk", "8",
                           "--max-tokens", "32", "--carry-state", env=env)
    assert rc == 0, err
    assert "state carried" in out + err
    epochs = RunDir(run).epoch_records()
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_bits_per_char_window64" in epochs[-1]
    ev = ["eval", run, "--json", "--samples", "2", "--temperatures", "1", "--max-len", "20"]
    rc, out, err = run_cli(*ev, env=env)
    assert rc == 0, err
    assert json.loads(out)["n_sequences"] == 6
    # The printed figures, not only --json (what a newcomer reads), and samples.
    rc, out, err = run_cli(*[a for a in ev if a != "--json"], env=env)
    assert rc == 0 and "Traceback" not in err and "bits_per_char:" in out, err
    rc, out, err = run_cli("sample", run, "--n", "2", "--max-len", "20", env=env)
    assert rc == 0 and len(out.splitlines()) >= 2, err
    rc, out, err = run_cli(*ev, "--limit", "all", env=env)
    assert rc == 0, err
    d = json.loads(out)
    assert d["n_sequences"] == 16
    cfg, vocab, params, _ = RunDir(run).restore("latest")
    corpus = load_corpus(str(src), ImdbOptions(char=True))
    bits, n = 0.0, 0
    for i in range(len(corpus.test)):
        ids = np.concatenate([[START_ID], corpus.test[i], [END_ID]])
        logits, _ = apply(params, ids[None, :-1], None, cfg=cfg.model)
        lp = jax.nn.log_softmax(np.asarray(logits[0], np.float64))
        bits -= sum(lp[t, ids[t + 1]] for t in range(len(ids) - 1)) / np.log(2)
        n += len(ids) - 1
    assert d["bits_per_char"] == pytest.approx(float(bits / n), rel=1e-5)
