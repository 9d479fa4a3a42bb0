"""The run directory: the one module that knows what a run directory holds and where.

    config.json        RunConfig with schema_version      vocab.json     the vocabulary
    metrics.jsonl      step records, then epoch records   truth*.json    floors and baselines (cached)
    checkpoints/<s>/   orbax, the latest few              best/<s>/      orbax, lowest validation loss
    samples/epoch-N.jsonl                                 *.png          plots
    .lock              held by the process training into it

Everything else (the loops, evaluation, plots, the CLI, the API, experiments) asks a `RunDir` for a
path or a record; nothing else joins file names onto a run's path. Resuming follows one rule,
`RunDir.resume_config`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import RunConfig
from .errors import UserError

# Written first into a directory a run starts in: a directory is ours to write into only when it is
# empty or holds this marker (a first try that was killed before its config.json), never because its
# files have names a run also uses.
MARKER = ".seqgen-run"
# What may change when a run is resumed: its length, and where the IMDb archive now is (a location,
# not a setting of the run).
MOVABLE = ("train.epochs", "train.max_time", "data.imdb")


@dataclass
class Restored:
    config: RunConfig
    vocab: Any  # data.vocab.Vocab
    params: Any
    step: int

    def __iter__(self):  # cfg, vocab, params, step = run.restore("best")
        return iter((self.config, self.vocab, self.params, self.step))


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    # ------------------------------------------------------------ named paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def vocab_path(self) -> Path:
        return self.path / "vocab.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.path / "best"

    def truth_path(self, split: str | None = None, limit: int | None = None, seed: int = 0) -> Path:
        """The training-time truth (`split=None`), or one evaluation's (per split, subset and seed)."""
        if split is None:
            return self.path / "truth.json"
        return self.path / (f"truth-{split}.json" if limit is None else f"truth-{split}-{limit}-seed{seed}.json")

    def samples_path(self, epoch: int) -> Path:
        return self.path / "samples" / f"epoch-{epoch}.jsonl"

    def plot_path(self, name: str) -> Path:
        return self.path / f"{name}.png"

    # ------------------------------------------------------------ state
    def exists(self) -> bool:
        return self.config_path.exists()

    def has_checkpoints(self) -> bool:
        d = self.checkpoints_dir
        return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())

    def load_config(self) -> RunConfig:
        if not self.path.is_dir() or not self.config_path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.json); train one with "
                            f"seqgen train NAME --run-dir {self.path}")
        try:
            return RunConfig.from_json(json.loads(self.config_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.config_path} is not valid UTF-8 JSON ({type(e).__name__}); the run directory "
                            "is damaged") from None

    def write_config(self, cfg: RunConfig) -> None:
        from .io import atomic_write_text

        atomic_write_text(self.config_path, cfg.dumps())

    def start(self, cfg: RunConfig, vocab) -> None:
        """A new run's files: its configuration, vocabulary and an empty metrics log."""
        self.write_config(cfg)
        vocab.save(self.vocab_path)
        self.metrics_path.write_text("")

    # ------------------------------------------------------------ metrics.jsonl
    def read_metrics(self) -> list[dict]:
        """Every record; a line cut short by a killed process is skipped."""
        out = []
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def epoch_records(self) -> list[dict]:
        return [m for m in self.read_metrics() if "epoch" in m]

    def step_records(self) -> list[dict]:
        """The logged train steps (not the compile event, nor mid-epoch validations)."""
        return [m for m in self.read_metrics() if "epoch" not in m and "loss" in m]

    def append_metrics(self, *records: dict) -> None:
        from .io import json_safe

        with open(self.metrics_path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(json_safe(r), allow_nan=False) + "\n")

    def truncate_metrics(self, step: int, epoch_done: int) -> None:
        """Drop records written after the checkpoint we resume from (and any torn last line)."""
        from .io import atomic_write_text

        keep = [m for m in self.read_metrics()
                if ("epoch" in m and m["epoch"] <= epoch_done) or ("epoch" not in m and m.get("step", 0) <= step)]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in keep))

    def write_samples(self, epoch: int, rows: list[dict]) -> None:
        from .io import atomic_write_text

        atomic_write_text(self.samples_path(epoch), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    # ------------------------------------------------------------ checkpoints
    def checkpointer(self, keep: int = 3, create: bool = True, primary: bool = True):
        from .checkpoint import Checkpointer

        return Checkpointer(self.checkpoints_dir, self.best_dir, keep=keep, create=create, primary=primary)

    def restore(self, checkpoint: str | int = "best") -> Restored:
        """Config, vocabulary and parameters from the directory alone (no code, no pickles)."""
        import jax

        from .data.vocab import Vocab
        from .model import init_params

        cfg = self.load_config()
        if not (self.checkpoints_dir.is_dir() or self.best_dir.is_dir()):
            raise UserError(f"{self.path} has no checkpoints yet; train it first (seqgen train ... --run-dir {self.path})")
        vocab = Vocab.load(self.vocab_path)
        # On this process's first device, whatever mesh wrote the checkpoint.
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                            jax.eval_shape(lambda: init_params(cfg.model, 0)))
        ck = self.checkpointer(create=False)
        try:
            step, params, _, _ = ck.restore(checkpoint, like)
        finally:
            ck.close()
        return Restored(cfg, vocab, params, step)

    # ------------------------------------------------------------ starting and resuming
    def resume_config(self, cfg: RunConfig, given: Iterable[str] | None = None,
                      name_of: Callable[[str], str] = str) -> RunConfig:
        """The one resume rule: the saved configuration, with only MOVABLE fields taken from `cfg`.

        `given` names the fields a user set explicitly (the CLI); any of them, other than MOVABLE,
        that differs from the saved run is refused (named by `name_of`: the CLI names its flags).
        Without `given` (a library call with a whole config), the model and data settings must match
        the saved ones."""
        if not self.exists():
            raise UserError(f"--resume: {self.path} is not a run directory; start it without --resume")
        saved = self.load_config()
        if cfg.data.name != saved.data.name:
            raise UserError(f"--resume: {self.path} trains {saved.data.name!r}, not {cfg.data.name!r}; resume with "
                            f"seqgen train {saved.data.name} --run-dir {self.path} --resume")
        library = given is None
        if library:
            given = [f"{sec}.{f}" for sec in ("data", "model") for f in vars(getattr(cfg, sec))
                     if f"{sec}.{f}" not in ("model.vocab_size", "data.content_hash")]
        given = list(given)
        clash = [k for k in given if k not in MOVABLE and _field(cfg, k) != _field(saved, k)]
        if clash:
            raise UserError(f"--resume: {', '.join(name_of(k) for k in clash)} differ from {self.config_path}; "
                            "resume with the saved settings or train into a new --run-dir")
        # A library call passes a whole config, so the run's length comes from it; the CLI only
        # changes what was given.
        moved = {k: _field(cfg, k) for k in MOVABLE if k != "data.imdb" and (library or k in given)}
        imdb = cfg.data.imdb or saved.data.imdb
        if imdb and not Path(imdb).exists() and os.environ.get("SEQGEN_IMDB"):
            imdb = None  # the archive moved: $SEQGEN_IMDB says where
        return saved.override(**moved, **{"data.imdb": imdb})

    def check_fresh(self) -> None:
        """A new run goes into a missing or empty directory only (or one a killed first try left)."""
        path = self.path
        if path.is_file():
            raise UserError(f"--run-dir {path} is a file; choose a directory")
        if self.exists() or self.has_checkpoints():
            raise UserError(f"{path} already holds a run; pass --resume to continue it or choose a new --run-dir")
        if path.is_dir() and not (path / MARKER).is_file():
            other = sorted(p.name for p in path.iterdir())
            if other:
                raise UserError(f"--run-dir {path} is not empty and not a run (it holds {', '.join(other[:3])}"
                                f"{', ...' if len(other) > 3 else ''}); choose a new or empty directory")

    def check_writable(self) -> None:
        """Create the directory and mark it as a run's (the marker doubles as the write probe)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / MARKER).write_text("written by seqgen_jax: this directory holds a training run\n")
        except OSError as e:
            raise UserError(f"cannot write the run directory {self.path}: {e.strerror or e}; choose another --run-dir") from None

    def lock(self):
        """An exclusive lock on the run directory for the life of the returned file: a second process
        training into the same run gets one line instead of interleaved metrics or orbax races."""
        import fcntl

        f = open(self.path / ".lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise UserError(f"{self.path} is in use by another seqgen process; wait for it to finish "
                            "or choose another --run-dir") from None
        return f


def _field(cfg: RunConfig, key: str):
    sec, _, name = key.partition(".")
    return getattr(getattr(cfg, sec), name)
