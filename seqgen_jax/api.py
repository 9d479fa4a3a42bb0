"""The Python API: restore a run for sampling and scoring in a notebook, configure and train one.

    import seqgen_jax as sg
    run = sg.load("runs/demo", checkpoint="best")   # config, vocab, params from orbax
    run.sample(n=10, temperature=0.8, prompt="((")   # -> list[str]
    run.log_prob(["(())", "()"])                     # -> log2 p per string (the end marker included)
    run.evaluate(split="test", samples=2000)         # -> the dict `seqgen eval --json` prints
    sg.train(sg.config("brackets", **{"model.hidden": 64}), run_dir="runs/x")

The CLI's sample/eval commands and this API call the same functions (`sample.sample`,
`evaluate.evaluate`, `evaluate.score_sequences`), so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import RunConfig


@dataclass
class Run:
    """A trained run restored from its directory: what sampling and scoring need, nothing else."""

    path: Path
    config: RunConfig
    vocab: Any  # data.vocab.Vocab
    params: Any  # the parameter pytree
    step: int

    @property
    def is_stream(self) -> bool:
        return self.config.data.name.split(":")[0] == "text"

    def sample(self, n: int = 10, temperature: float = 1.0, top_k: int = 0, prompt: str = "",
               max_len: int = 200, seed: int = 0) -> list[str]:
        import jax

        from .sample import sample

        s = sample(self.params, self.config.model, self.vocab, n=n, key=jax.random.key(seed),
                   temperature=temperature, top_k=top_k, prompt=prompt, max_len=max_len,
                   unk_seen=self.config.data.voc is not None, stream=self.is_stream)
        return s.texts(self.vocab)

    def log_prob(self, strings: Sequence[str]) -> list[float]:
        """log2 probability of each whole string under the model: every symbol and the end marker
        (for a text-stream run, every token after the newline it is primed with)."""
        import numpy as np

        from .data.vocab import Ragged
        from .evaluate import score_sequences

        strings = list(strings)
        if self.is_stream:
            from .data.base import LOG2E
            from .sample import stream_context
            from .stream import score_stream

            prime = stream_context(self.vocab, "")
            return [-score_stream(self.params, self.config, np.concatenate([prime, self.vocab.encode(s)]),
                                  block=64)[0] * LOG2E for s in strings]
        for s in strings:
            self.vocab.encode(s)  # one clear error for a symbol outside the vocabulary
        log2p, _ = score_sequences(self.params, self.config, Ragged.from_strings(strings, self.vocab))
        return [float(x) for x in log2p]

    def evaluate(self, split: str = "test", samples: int = 1000, temperatures=(0.0, 0.5, 1.0),
                 max_len: int = 1000, seed: int = 0, limit: int | None = None, imdb: str | None = None) -> dict:
        from .cli_run import _with_imdb_source
        from .data import build_dataset
        from .evaluate import evaluate

        cfg = _with_imdb_source(self.config, imdb)
        ds = build_dataset(cfg.data)
        out = evaluate(self.params, cfg, ds, split=split, limit=limit, samples=samples,
                       temperatures=tuple(temperatures), max_len=max_len, seed=seed, run_dir=self.path)
        return {"run": str(self.path), "checkpoint_step": int(self.step), "dataset": ds.spec, **out}


def load(run_dir, checkpoint: str | int = "latest") -> Run:
    """Restore a run directory: its config.json, vocab.json and an orbax checkpoint ("latest", "best"
    or a step)."""
    from .cli_run import _restore

    cfg, vocab, params, step = _restore(str(run_dir), str(checkpoint))
    return Run(Path(run_dir), cfg, vocab, params, int(step))


def config(dataset: str, **overrides) -> RunConfig:
    """The dataset's preset with dotted overrides: `config("brackets", **{"model.hidden": 64})`."""
    from .cli_run import absolute_spec
    from .presets import preset_config

    return preset_config(absolute_spec(dataset)).override(**overrides)


def train(cfg: RunConfig, run_dir, *, resume: bool = False, log=print) -> dict:
    """Train into `run_dir` (a new or empty directory, or an existing run with `resume`); returns the
    last epoch's record."""
    from .train import train as _train

    return _train(cfg, run_dir, resume=resume, log=log)
