"""Per-dataset defaults for `seqgen train NAME`: settings measured on 2 CPU cores to reach the
bars in the README (see its results section). Flags given on the command line override them."""
from __future__ import annotations

from .config import RunConfig
from .data import parse_spec

PRESETS: dict[str, dict] = {
    "brackets": {"model.embed": 32, "model.hidden": 32, "train.lr": 0.01, "train.epochs": 12},
    "ndfa": {"model.embed": 32, "model.hidden": 32, "train.lr": 0.01, "train.epochs": 10},
    "toy": {"model.embed": 32, "model.hidden": 64, "train.lr": 0.01, "train.epochs": 10},
    # Two passes over 15,000 reviews fit 30 minutes on 2 CPU cores (experiments/imdb.py: 2.054 bits/char).
    "imdb": {"model.embed": 64, "model.hidden": 384, "model.dropout": 0.0, "train.lr": 0.002, "train.epochs": 2,
             "train.max_tokens": 8192, "data.chunk": 256, "data.n_train": 15_000, "data.n_val": 1000},
}
PRESETS["dyck1"] = PRESETS["brackets"]


def preset_config(spec: str) -> RunConfig:
    name, _ = parse_spec(spec)
    return RunConfig().override(**{"data.name": spec, **PRESETS.get(name, {})})
