import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMDB = ROOT.parent / "shared" / "data" / "aclImdb_v1.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Caches go to a per-session temporary folder so tests never depend on a user's ~/.cache.
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SEQGEN_CACHE", str(base / "seqgen-cache"))
    monkeypatch.setenv("SEQGEN_JAX_CACHE", str(base / "xla-cache"))


def run_cli(*args, env=None, timeout=600, cwd=None):
    """`python -m seqgen_jax ARGS` in a fresh process: (returncode, stdout, stderr)."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "seqgen_jax", *map(str, args)], capture_output=True, text=True,
                       env=e, timeout=timeout, cwd=cwd or ROOT)
    return p.returncode, p.stdout, p.stderr


def one_line_error(rc, out, err, *needles):
    """The contract for bad input: exit code 2, one line on stderr (JAX's own log lines aside), no
    traceback, naming what was wrong. Returns the line."""
    assert rc == 2, (rc, out[-500:], err[-2000:])
    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith(("E1", "W1", "I1"))]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
