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
    # One compilation cache for the whole run, every program in it: the suite compiles the same tiny
    # programs in many tests and processes (a third of its time before).
    monkeypatch.setenv("SEQGEN_JAX_CACHE_MIN_SECONDS", "0")


def run_cli(*args, env=None, timeout=600, cwd=None, fresh=False):
    """`seqgen ARGS`: (returncode, stdout, stderr). In this process (the CLI's own `main`, its output
    captured) unless the call needs a fresh one: its own environment or folder, or `fresh` (a process
    to kill, a device layout to choose); a fresh process proves nothing more for the rest and costs a
    JAX start-up and its compilations."""
    if cwd is None and not fresh and not set(env or {}) & _BEFORE_JAX:
        return _in_process(args, env or {})
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


# Read when JAX starts: a call that sets them needs a process of its own.
_BEFORE_JAX = {"XLA_FLAGS", "SEQGEN_CPU_DEVICES", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES"}


def _in_process(args, env: dict):
    import contextlib
    import io
    import threading

    from seqgen_jax import cli

    out, err = io.StringIO(), io.StringIO()
    hooks = (sys.unraisablehook, threading.excepthook)  # the CLI quiets them after an error; keep ours
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main([str(a) for a in args])
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        sys.unraisablehook, threading.excepthook = hooks
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, out.getvalue(), err.getvalue()
