"""The benchmark harnesses themselves (tiny shapes, CPU): every row measured on both sides with its
spread, JSON written. PyTorch is part of CI's set-up (.ci/run installs the CPU wheel), so a missing
torch fails here instead of skipping."""
import json
import os
import platform
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402


def test_throughput_harness_smoke(tmp_path):
    out = tmp_path / "t.json"
    p = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, SEQGEN_CPU_DEVICES="1"))  # the harness, not the devices, is under test
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(out.read_text())
    assert {r["kind"] for r in d["rows"]} == {"train", "epoch", "sample"}
    for r in d["rows"]:
        for side in ("jax", "torch_careful", "torch_folded", "torch_course"):
            s = r[side]
            assert 0 < s["min"] <= s["median"] <= s["max"], (r["what"], side, s)
        best = r[r["best_torch"]]
        assert r["repeats"] >= 5 and r["lead"] == (r["jax"]["min"] > best["max"])
        assert abs(r["ratio_best"] - r["jax"]["median"] / best["median"]) < 1e-9
        assert abs(r["ratio_careful"] - r["jax"]["median"] / r["torch_careful"]["median"]) < 1e-9
    assert d["meta"]["precision"] == "fp32" and d["meta"]["jax"] and d["meta"]["torch"]
    assert "| kind | what |" in p.stdout


def test_cpu_layout_runs_every_layout(tmp_path):
    out = tmp_path / "l.json"
    p = subprocess.run([sys.executable, "benchmarks/cpu_layout.py", "--hidden", "8", "--batch", "4", "--steps", "3",
                        "--vocab", "11", "--n", "2", "--rounds", "2", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    # The children really ran under different layouts: device counts and Eigen's threads as named.
    cores = min(len(os.sched_getaffinity(0)), 8)
    assert (row["per_core"]["devices"], row["per_core"]["eigen_threads"]) == (cores, cores == 1)
    assert (row["threaded"]["devices"], row["threaded"]["eigen_threads"]) == (1, True)
    assert (row["one_device"]["devices"], row["one_device"]["eigen_threads"]) == (1, False)
    kept = platform.libc_ver()[0] == "glibc"
    assert (row["per_core_kept"]["devices"], row["per_core_kept"]["host_memory_kept"]) == (cores, kept)
    assert not row["per_core"]["host_memory_kept"] and row["one_device"]["host_memory_kept"] == kept
    names = ("per_core", "per_core_kept", "threaded", "one_device")
    for side in names:
        s = row[side]["tokens_per_s"]
        assert 0 < s["min"] <= s["median"] <= s["max"] and s["repeats"] == 2
    winners = [n for n in names if all(row[n]["tokens_per_s"]["min"] > row[o]["tokens_per_s"]["max"]
                                       for o in names if o != n)]
    assert row["faster"] == (winners[0] if winners else "within the spread")


def test_interleaved_rates_and_lead():
    import time

    calls = []

    def slow():
        calls.append("s")
        time.sleep(0.004)

    def fast():
        calls.append("f")
        time.sleep(0.001)

    st = harness.interleaved({"slow": (slow, lambda _: None), "fast": (fast, lambda _: None)}, work=1.0,
                             repeats=5, min_seconds=0.01)
    assert st["slow"]["repeats"] == 5 and st["fast"]["repeats"] == 5
    assert 150 < st["slow"]["median"] < 260 and 500 < st["fast"]["median"] < 1010  # 1/0.004 and 1/0.001
    assert harness.lead(st["fast"], st["slow"]) and not harness.lead(st["slow"], st["fast"])
    # Interleaved: the variants alternate instead of running all of one first.
    body = "".join(calls)
    assert "sf" in body and "fs" in body
    assert harness.lead({"min": 2.0, "max": 3}, {"min": 1.0, "max": 2.5}) is False  # overlapping spreads


def test_gpu_round_smoke_runs_every_part(tmp_path):
    """benchmarks/gpu_round.py --smoke: every part in one process on the CPU at tiny shapes, so the
    script a GPU session runs once has run here first."""
    out = tmp_path / "gr"
    p = subprocess.run([sys.executable, "benchmarks/gpu_round.py", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    d = json.loads((out / "gpu_round.json").read_text())
    import gpu_round

    assert [s["part"] for s in d["parts"]] == [name for name, _, _ in gpu_round.PARTS]
    assert all(s["status"] == "ok" for s in d["parts"]), d["parts"]
    recs = d["records"]
    kinds = {r["kind"] for r in recs}
    assert {"env", "matmul_precision", "check", "train", "epoch", "sample", "loop", "sharding", "sweep",
            "reference", "quality"} <= kinds
    assert all(r["ok"] for r in recs if r["kind"] == "check")
    tf32 = [r for r in recs if r["kind"] == "train" and r["part"] == "train_tf32"]
    assert tf32 and all({"scan-u8", "scan-u16", "torch_careful", "torch_folded"} <= set(r["stats"]) for r in tf32)
    assert all(r["skipped"].get("cudnn") == "needs an NVIDIA GPU" for r in tf32)
    pal = [r for r in recs if r["kind"] == "train" and r["part"] == "train_pallas"]
    assert pal and all({"pallas", "scan-u8", "torch_careful"} <= set(r["stats"]) for r in pal)
    for r in tf32:  # ratios against the best PyTorch variant of the row
        best = max((v["median"] for n, v in r["stats"].items() if n.startswith("torch")))
        for name, ratio in r["ratio_vs_best_torch"].items():
            assert abs(ratio - r["stats"][name]["median"] / best) < 1e-9
    (ep,) = [r for r in recs if r["kind"] == "epoch"]
    assert {"jax_bucket", "jax_packed", "torch_careful", "torch_folded"} <= set(ep["stats"]) and ep["compile_s"]["packed"] > 0
    (sw,) = [r for r in recs if r["kind"] == "sweep"]
    assert sw["members"] == 4 and abs(sw["ratio"] - sw["stats"]["members_4"]["median"] / sw["stats"]["members_1"]["median"]) < 1e-9
    (qt,) = [r for r in recs if r["kind"] == "quality" and r["part"] == "quality_text"]
    assert qt["error"] is None and qt["val_nats_window64"] > 0
    assert "| part | what |" in p.stdout


def test_throughput_children_run_the_layout_they_are_named_for():
    """This process imported seqgen_jax, which wrote its own device count into XLA_FLAGS; each child must
    still run the layout its rows are labelled with (the one-device rows once inherited the count and
    ran per core)."""
    import seqgen_jax  # noqa: F401  (as throughput.py's parent process does)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    def layout(name):
        p = subprocess.run([sys.executable, "-c", "import seqgen_jax, jax; from seqgen_jax._devices import "
                            "host_memory_kept as k; print(jax.device_count(), k())"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=throughput.child_env(name))
        assert p.returncode == 0, p.stderr[-2000:]
        n, kept = p.stdout.split()[-2:]
        return int(n), kept == "True"

    cores = min(len(os.sched_getaffinity(0)), 8)
    glibc = platform.libc_ver()[0] == "glibc"
    assert layout("per_core_kept") == (cores, glibc)
    assert layout("per_core") == (cores, cores == 1 and glibc)
