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
from .data.spec import dataset_kind
from .errors import UserError
from .run import RunDir


def _int(name: str, v, lo: int, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name} must be an int, not {type(v).__name__} ({v!r})")
    if v < lo or (hi is not None and v >= hi):
        raise ValueError(f"{name} = {v} must be >= {lo}" + (f" and < {hi}" if hi is not None else ""))
    return v


def _number(name: str, v, lo: float = 0.0) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise TypeError(f"{name} must be a number, not {type(v).__name__} ({v!r})")
    if not lo <= v < math.inf:
        raise ValueError(f"{name} = {v} must be a finite number >= {lo}")
    return float(v)


def _sampling_args(n, temperature, top_k, prompt, max_len, seed) -> None:
    """The public sampling arguments, checked where a user passes them (not deep inside JAX)."""
    _int("n", n, 1)
    _number("temperature", temperature)
    _int("top_k", top_k, 0)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__} ({prompt!r}); use \"\" for none")
    _int("max_len", max_len, 1)
    _int("seed", seed, 0, 2 ** 32)


def _strings(strings) -> list[str]:
    if isinstance(strings, str):
        raise TypeError("log_prob takes a list of strings, not one str (it would score each character); "
                        f"wrap it: log_prob([{strings[:20]!r}])")
    out = list(strings)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"strings[{i}] must be a str, not {type(x).__name__} ({x!r})")
    return out


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
        return dataset_kind(self.config.data.name) == "text"

    def language(self):
        """The run's Language (its truth), or None for a text corpus."""
        from .data import get_language

        return None if dataset_kind(self.config.data.name) != "language" else get_language(self.config.data.name)

    def draw(self, n: int = 10, temperature: float = 1.0, top_k: int = 0, prompt: str = "", max_len: int = 200,
             seed: int = 0):
        """n samples as `sample.Samples` (tokens, lengths, whether each drew `.end`)."""
        import jax

        from .sample import check_sampling_args, sample

        _sampling_args(n, temperature, top_k, prompt, max_len, seed)
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

        strings = _strings(strings)
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
                 max_len: int = 1000, seed: int = 0, limit: int | str | None = None, imdb: str | None = None,
                 allow_changed_corpus: bool = False, by_length: bool = False) -> dict:
        """The figures `seqgen eval --json` prints. `limit`: that many random held-out sequences, or
        "all" (for IMDb every official test review, beyond the run's data.n_test). `imdb`: where an
        IMDb run's archive is now. A text corpus that changed since training is refused unless
        `allow_changed_corpus`. `by_length`: the figures per string length too ("by_length" rows, and
        by_length.png in the run directory)."""
        from .data import build_dataset, check_corpus
        from .evaluate import evaluate
        from .sample import check_sampling_args

        _int("samples", samples, 1)
        _int("max_len", max_len, 1)
        _int("seed", seed, 0, 2 ** 32)
        if split not in ("val", "test"):
            raise ValueError(f"split = {split!r} must be 'val' or 'test'")
        temperatures = tuple(_number(f"temperatures[{i}]", t) for i, t in enumerate(temperatures))
        if limit is not None and limit != "all":
            _int("limit", limit, 1)
        check_sampling_args(samples, 0.0, 0, max_len)
        cfg = corpus_source(self.config, imdb)
        if limit == "all":
            limit = None
            if dataset_kind(cfg.data.name) == "imdb":
                cfg = cfg.override(**{"data.n_test": 10 ** 9})
        elif limit is not None and limit < 1:
            raise UserError(f"--limit {limit} must be >= 1")
        ds = build_dataset(cfg.data)
        check_corpus(cfg.data, ds, "evaluating", allow_changed_corpus)
        if by_length and ds.language is None:
            raise UserError("--by-length needs a language with a known truth (not a text corpus)")
        extra = {"by_length": True} if by_length else {}
        out = evaluate(self.params, cfg, ds, split=split, limit=limit, samples=samples,
                       temperatures=tuple(temperatures), max_len=max_len, seed=seed, run=self.dir, **extra)
        if by_length:
            from .config import parse_lengths
            from .evaluate import plot_by_length

            tl = parse_lengths(cfg.data.train_lengths) if cfg.data.train_lengths else None
            try:
                plot_by_length(out["by_length"], self.dir.plot_path("by_length"), tl)
            except OSError:
                pass  # a read-only run directory: the table is still printed
        return {"run": str(self.path), "checkpoint_step": int(self.step), "dataset": ds.spec, **out}


def corpus_source(cfg: RunConfig, imdb: str | None) -> RunConfig:
    """Where an IMDb run's corpus is now: `imdb`, else the path the run was trained with if it still
    exists, else $SEQGEN_IMDB (so a moved archive needs no edit of config.json)."""
    import os

    if dataset_kind(cfg.data.name) != "imdb":
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
    from ._devices import enable_compilation_cache

    enable_compilation_cache()  # sampling and scoring compile per shape too; a second call reuses them
    run = RunDir(run_dir)
    r = run.restore(checkpoint)
    return Run(run, r.config, r.vocab, r.params, int(r.step))


def config(dataset: str, **overrides) -> RunConfig:
    """The dataset's preset with dotted overrides: `config("brackets", **{"model.hidden": 64})`."""
    from .data import absolute_spec
    from .presets import preset_config

    return preset_config(absolute_spec(dataset)).override(**overrides)


def sweep(cfg: RunConfig, grid: dict | None = None, seeds: int = 1, run_dir=None, *, resume: bool = False,
          log=print) -> dict:
    """Train the grid x seeds (`{"train.lr": [0.001, 0.003]}`, 4) into `run_dir`/<member>/, members of
    one shape as one program; returns sweep.json's content. The same path as `seqgen sweep`."""
    from .sweeps import sweep as _sweep

    return _sweep(cfg, grid, seeds, run_dir, resume=resume, log=log)


def train(cfg: RunConfig, run_dir=None, *, resume: bool = False, log=print) -> dict:
    """Train into `run_dir` (a new or empty directory, default runs/<dataset>; or an existing run with
    `resume`); returns the last epoch's record. The same path as `seqgen train`."""
    from .train import train as _train

    return _train(cfg, run_dir, resume=resume, log=log)
