"""Every command the README and docs/ show runs as written: the README's first command (the main job)
exactly, from the checkout, and every fenced `bash` block of docs/ in a scratch folder beside a link
to experiments/ and ../shared. Blocks that need the IMDb archive, several hosts or a GPU are fenced
`sh` and say so instead."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))


def _bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _commands(block: str) -> list[str]:
    return [l.strip() for l in block.splitlines() if l.strip() and not l.strip().startswith("#")]


def _run(cmd: str, cwd: Path, timeout: int = 600):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_readmes_first_command_runs_as_written():
    """The main job, copied from the README: install, train, sample, evaluate (the printed figures,
    not only --json: this is the path a newcomer takes first)."""
    first = _commands(_bash_blocks(ROOT / "README.md")[0])[0]
    assert first.startswith("python3 -m pip install -e .") and "eval runs/demo" in first
    cmd = first.replace("python3 ", f"{sys.executable} ")
    p = _run(cmd, ROOT, timeout=900)
    assert p.returncode == 0 and "Traceback" not in p.stderr, (p.stdout[-2000:], p.stderr[-3000:])
    for key in ("kl_bits_per_token:", "valid_rate:", "valid_rate_ci:", "floor_bits_per_token:"):
        assert key in p.stdout, key
    assert "epoch 12/12" in p.stdout and len([l for l in p.stdout.splitlines() if set(l) <= set("()") and l]) >= 10


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_bash_block_of_the_docs_runs(tmp_path, doc, monkeypatch):
    """Each command through `seqgen`'s own main in this process (the README's command above proves the
    fresh-process path), from a scratch folder where the docs' relative paths resolve."""
    import shlex

    from conftest import run_cli

    blocks = _bash_blocks(doc)
    if not blocks:
        return  # this page shows no runnable commands (its `sh` blocks need IMDb, hosts or a GPU)
    work = tmp_path / "work"
    work.mkdir()
    (work / "experiments").symlink_to(ROOT / "experiments")
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    monkeypatch.chdir(work)
    for block in blocks:
        for cmd in _commands(block):
            assert cmd.startswith("seqgen "), cmd
            rc, out, err = run_cli(*shlex.split(cmd)[1:])
            assert rc == 0 and "Traceback" not in err, (cmd, err[-3000:])
