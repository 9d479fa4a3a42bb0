"""The course report's figures from metrics.jsonl: loss and gradient norm per epoch (mean and spread,
clipping threshold drawn) and per step, cross-entropy against the entropy floor, valid rates."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from .data.base import LN2


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written plot behind
        raise
    finally:
        plt.close(fig)


def _num(v) -> float:
    return float("nan") if v is None else v


def plot_run(run, cfg) -> None:
    """run: a `run.RunDir`."""
    steps = run.step_records()
    epochs = run.epoch_records()
    if not epochs:
        return
    truth_path = run.truth_path()
    truth = json.loads(truth_path.read_text()) if truth_path.exists() else {}
    ep = [r["epoch"] for r in epochs]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(ep, [_num(r["train_ce_bits_per_token"]) for r in epochs], "o-", label="train")
    a1.plot(ep, [_num(r["val_ce_bits_per_token"]) for r in epochs], "s-", label="validation")
    a1.set(xlabel="epoch", ylabel="cross-entropy (bits/token)", title="Loss per epoch")
    a1.legend()
    if steps:  # a diverged step's loss is recorded as null
        a2.plot([r["step"] for r in steps], [_num(r["loss"]) / LN2 for r in steps], lw=0.8)
    a2.set(xlabel="step", ylabel="batch loss (bits/token)", title="Loss per logged step")
    _save(fig, run.plot_path("loss"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    mean = [_num(r["grad_norm_mean"]) for r in epochs]
    std = [_num(r["grad_norm_std"]) for r in epochs]
    a1.errorbar(ep, mean, yerr=std, fmt="o-", capsize=3, label="mean ± std")
    a1.plot(ep, [_num(r["grad_norm_max"]) for r in epochs], "^--", label="max")
    a1.axhline(cfg.train.clip, color="r", ls=":", label=f"clip = {cfg.train.clip:g}")
    a1.set(xlabel="epoch", ylabel="global gradient norm (before clipping)", title="Gradient norm per epoch")
    a1.legend()
    if steps:
        a2.plot([r["step"] for r in steps], [_num(r["grad_norm"]) for r in steps], lw=0.8)
        a2.axhline(cfg.train.clip, color="r", ls=":")
    a2.set(xlabel="step", ylabel="gradient norm", title="Gradient norm per logged step")
    _save(fig, run.plot_path("grad_norm"))

    if "floor_bits_per_token" in truth:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ep, [_num(r["val_ce_bits_per_token"]) for r in epochs], "s-", label="model (validation)")
        ax.axhline(truth["floor_bits_per_token"], color="k", ls="--", label="entropy floor")
        ax.axhline(truth["best_ngram_bits_per_token"], color="g", ls=":",
                   label=f"best n-gram (order {truth['best_ngram_order']})")
        ax.set(xlabel="epoch", ylabel="bits per token", title="Cross-entropy against the floor")
        ax.legend()
        _save(fig, run.plot_path("ce_vs_floor"))
    if any("valid_rate_1.0" in r for r in epochs):
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in ("0.0", "1.0"):
            ax.plot(ep, [r.get(f"valid_rate_{t}") for r in epochs], "o-", label=f"T = {t}")
        ax.set(xlabel="epoch", ylabel="share of valid samples", ylim=(0, 1.02), title="Valid samples")
        ax.legend()
        _save(fig, run.plot_path("valid_rate"))
