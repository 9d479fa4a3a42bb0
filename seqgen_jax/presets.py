"""Per-dataset defaults for `seqgen train NAME`: settings measured on 2 CPU cores to reach the
bars in the README (see its results section). Flags given on the command line override them."""
from __future__ import annotations

from .config import RunConfig
from .data import parse_spec

PRESETS: dict[str, dict] = {
    "brackets": {"model.embed": 32, "model.hidden": 32, "train.lr": 0.01, "train.epochs": 12},
    "ndfa": {"model.embed": 32, "model.hidden": 32, "train.lr": 0.01, "train.epochs": 10},
    "toy": {"model.embed": 32, "model.hidden": 64, "train.lr": 0.01, "train.epochs": 10},
    # 64-character windows in small batches give the most updates per minute (experiments/imdb.py has
    # the measurements); in 30 minutes on 2 CPU cores width beat updates: (64, 512) at lr 0.007 scored
    # 1.875 bits/char on 2,000 test reviews in ~7,600 steps, (64, 384) at lr 0.01 1.888 in 18,500, and
    # 1.854 in 9,951 steps once a layer this wide trained on one CPU device (README). 128 windows per
    # step ran 1.6x the tokens/s but scored 1.911 in 2,848 steps: updates count more than tokens here,
    # down to ~32: 16 windows with Adam's b2 at 0.99 (14,548 steps) tied the preset (1.853).
    # The cosine-time schedule ends wherever --max-time stops the two planned passes. Each window starts
    # from a zero state: carrying the state through the reviews (--carry-state) scored no better on whole
    # test reviews (2.121 against 2.114 bits/char, README).
    "imdb": {"model.embed": 64, "model.hidden": 512, "model.dropout": 0.0, "train.lr": 0.007, "train.epochs": 2,
             "train.max_tokens": 2048, "data.chunk": 64, "data.n_train": 16_000, "data.n_val": 1000,
             "data.carry_state": False},
}
PRESETS["dyck1"] = PRESETS["brackets"]
# User grammars and automata: the toy grammar's model on 50,000 strings in small batches, since such
# strings are often short and 10,000-token batches left too few updates (KL 0.108 on even_ab.json after
# 250 steps; 0.0009 after 2,500 steps of 2,000 tokens).
PRESETS["pcfg"] = {"model.embed": 32, "model.hidden": 64, "train.lr": 0.01, "train.epochs": 20, "data.n_train": 50_000,
                   "train.max_tokens": 2000}
PRESETS["pfsa"] = PRESETS["pcfg"]
# Text streams (experiments/shakespeare.py has the measurements): windows of 64 characters, 32 streams,
# the state carried across windows.
PRESETS["text"] = {"model.embed": 64, "model.hidden": 256, "train.lr": 0.01, "train.epochs": 5,
                   "train.max_tokens": 2048, "data.chunk": 64, "train.log_every": 50}


def preset_config(spec: str) -> RunConfig:
    name, _ = parse_spec(spec)
    return RunConfig().override(**{"data.name": spec, **PRESETS.get(name, {})})
