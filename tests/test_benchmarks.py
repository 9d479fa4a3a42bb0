"""The benchmark harness itself (tiny shapes): every row measured on both sides, JSON written."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_throughput_harness_smoke(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch baseline is the optional extra [torch]")
    out = tmp_path / "t.json"
    p = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(out.read_text())
    kinds = {r["kind"] for r in d["rows"]}
    assert kinds == {"train", "epoch", "sample"}
    for r in d["rows"]:
        assert r["jax"] > 0 and r["torch_careful"] > 0 and r["torch_course"] > 0 and r["ratio_careful"] > 0
    assert d["meta"]["precision"] == "fp32" and d["meta"]["jax"] and d["meta"]["torch"]
    assert "| kind | what |" in p.stdout
