"""Per-dataset defaults for `seqgen train NAME`: settings measured on 2 CPU cores to reach the
bars in the README (see its results section). Flags given on the command line override them."""
from __future__ import annotations

from .config import RunConfig
from .data import parse_spec

PRESETS: dict[str, dict] = {
    "brackets": {"model.embed": 32, "model.hidden": 32, "train.lr": 0.01, "train.epochs": 12},
    "ndfa": {"model.embed": 32, "model.hidden": 32, "train.lr": 0.01, "train.epochs": 10},
    "toy": {"model.embed": 32, "model.hidden": 64, "train.lr": 0.01, "train.epochs": 10},
    # Two passes over 16,000 reviews in 64-character windows fit 30 minutes on 2 CPU cores; short windows
    # and a high lr give the most updates per minute (experiments/imdb.py has the measurements).
    "imdb": {"model.embed": 64, "model.hidden": 384, "model.dropout": 0.0, "train.lr": 0.01, "train.epochs": 2,
             "train.max_tokens": 2048, "data.chunk": 64, "data.n_train": 16_000, "data.n_val": 1000},
}
PRESETS["dyck1"] = PRESETS["brackets"]


def preset_config(spec: str) -> RunConfig:
    name, _ = parse_spec(spec)
    return RunConfig().override(**{"data.name": spec, **PRESETS.get(name, {})})
