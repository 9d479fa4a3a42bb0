"""The Python API: restore a run for sampling and scoring in a notebook, configure and train one.

    import seqgen_jax as sg
    run = sg.load("runs/demo", checkpoint="best")   # config, vocab, params from orbax
    run.sample(n=10, temperature=0.8, prompt="((")   # -> list[str]
    run.log_prob(["(())", "()"])                     # -> log2 p per string (the end marker included)
    run.evaluate(split="test", samples=2000)         # -> the dict `seqgen eval --json` prints
    sg.train(sg.config("brackets", **{"model.hidden": 64}), run_dir="runs/x")

The CLI's `sample` and `eval` commands are this API plus argument parsing and printing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from .config import RunConfig
from .errors import UserError
from .run import RunDir


@dataclass
class Run:
    """A trained run restored from its directory: what sampling and scoring need, nothing else."""

    dir: RunDir
    config: RunConfig
    vocab: Any  # data.vocab.Vocab
    params: Any  # the parameter pytree
    step: int

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def is_stream(self) -> bool:
        """Trained on a raw text stream without `.start` (text:PATH): sampling is primed differently."""
        return self.config.data.name.split(":")[0] == "text"

    def language(self):
        """The run's Language (its truth), or None for a text corpus."""
        from .data import CORPORA, get_language

        return None if self.config.data.name.split(":")[0] in CORPORA else get_language(self.config.data.name)

    def draw(self, n: int = 10, temperature: float = 1.0, top_k: int = 0, prompt: str = "", max_len: int = 200,
             seed: int = 0):
        """n samples as `sample.Samples` (tokens, lengths, whether each drew `.end`)."""
        import jax

        from .sample import check_sampling_args, sample

        check_sampling_args(n, temperature, top_k, max_len)
        return sample(self.params, self.config.model, self.vocab, n=n, key=jax.random.key(seed),
                      temperature=temperature, top_k=top_k, prompt=prompt, max_len=max_len,
                      unk_seen=self.config.data.voc is not None, stream=self.is_stream)

    def sample(self, n: int = 10, temperature: float = 1.0, top_k: int = 0, prompt: str = "",
               max_len: int = 200, seed: int = 0) -> list[str]:
        return self.draw(n, temperature, top_k, prompt, max_len, seed).texts(self.vocab)

    def sample_records(self, n: int = 10, temperature: float = 1.0, top_k: int = 0, prompt: str = "",
                       max_len: int = 200, seed: int = 0) -> list[dict]:
        """Samples as records: text, ended, and for a language with a known truth valid and log2_prob."""
        s = self.draw(n, temperature, top_k, prompt, max_len, seed)
        lang = self.language()
        rows = []
        for text, ended in zip(s.texts(self.vocab), s.ended):
            row = {"text": text, "ended": bool(ended)}
            if lang is not None:
                lp = lang.log2_prob(text) if ended else -math.inf
                row.update({"valid": lp > -math.inf, "log2_prob": lp if lp > -math.inf else None})
            rows.append(row)
        return rows

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
                 max_len: int = 1000, seed: int = 0, limit: int | str | None = None, imdb: str | None = None) -> dict:
        """The figures `seqgen eval --json` prints. `limit`: that many random held-out sequences, or
        "all" (for IMDb every official test review, beyond the run's data.n_test). `imdb`: where an
        IMDb run's archive is now."""
        from .data import build_dataset
        from .evaluate import evaluate
        from .sample import check_sampling_args

        if samples < 1:
            raise UserError(f"--samples {samples} must be >= 1")
        check_sampling_args(samples, 0.0, 0, max_len)
        cfg = corpus_source(self.config, imdb)
        if limit == "all":
            limit = None
            if cfg.data.name.split(":")[0] == "imdb":
                cfg = cfg.override(**{"data.n_test": 10 ** 9})
        elif limit is not None and limit < 1:
            raise UserError(f"--limit {limit} must be >= 1")
        ds = build_dataset(cfg.data)
        out = evaluate(self.params, cfg, ds, split=split, limit=limit, samples=samples,
                       temperatures=tuple(temperatures), max_len=max_len, seed=seed, run=self.dir)
        return {"run": str(self.path), "checkpoint_step": int(self.step), "dataset": ds.spec, **out}


def corpus_source(cfg: RunConfig, imdb: str | None) -> RunConfig:
    """Where an IMDb run's corpus is now: `imdb`, else the path the run was trained with if it still
    exists, else $SEQGEN_IMDB (so a moved archive needs no edit of config.json)."""
    import os

    if cfg.data.name.split(":")[0] != "imdb":
        if imdb is not None:
            raise UserError(f"--imdb applies to IMDb runs; this run trains {cfg.data.name}")
        return cfg
    if imdb is not None:
        src = os.path.abspath(os.path.expanduser(imdb))
    elif cfg.data.imdb and Path(cfg.data.imdb).exists():
        src = cfg.data.imdb
    else:
        src = None  # resolve_source reads $SEQGEN_IMDB, or says how to get the corpus
    return replace(cfg, data=replace(cfg.data, imdb=src))


def load(run_dir, checkpoint: str | int = "latest") -> Run:
    """Restore a run directory: its config.json, vocab.json and an orbax checkpoint ("latest", "best"
    or a step)."""
    run = RunDir(run_dir)
    r = run.restore(checkpoint)
    return Run(run, r.config, r.vocab, r.params, int(r.step))


def config(dataset: str, **overrides) -> RunConfig:
    """The dataset's preset with dotted overrides: `config("brackets", **{"model.hidden": 64})`."""
    from .data import absolute_spec
    from .presets import preset_config

    return preset_config(absolute_spec(dataset)).override(**overrides)


def train(cfg: RunConfig, run_dir, *, resume: bool = False, log=print) -> dict:
    """Train into `run_dir` (a new or empty directory, or an existing run with `resume`); returns the
    last epoch's record."""
    from .train import train as _train

    return _train(cfg, run_dir, resume=resume, log=log)
