"""Feeds: what an epoch of training reads, behind one small interface, for the one loop in train.py.

    feed = train.make_feed(cfg, ds, placement) # bucket | stream | packed
    feed.steps_in(epoch), feed.first_step(epoch), feed.tokens_per_epoch, feed.spec (a step.StepSpec)
    feed.describe()
    feed.init_carry()                          # the carried LSTM state at an epoch's start, or None
    feed.examples(state)                       # one (state, data, xs, live) per block shape: compile ahead
    for block in feed.blocks(epoch, start):    # K steps at a time, from step `start` of the epoch
        state, metrics = runner(state, block.data, block.xs, block.live)

* `bucket` (buckets.BucketFeed): strings in length buckets, one padded device matrix per bucket, a
  step gathers its rows by index; each row starts from a zero state. The course's batching.
* `stream` (stream.WindowFeed): a token stream cut into B rows walked in windows of `chunk`, the
  state carried from window to window (truncated BPTT): text corpora, IMDb `--carry-state`.
* `packed` (stream.WindowFeed): the strings laid end to end, each as `.start` and its symbols, in B
  rows walked like a stream; the state is zeroed at every `.start`, and a `.start` target is scored as
  the `.end` of the string before it (a row's last string gets one `.end`), so every string is scored
  exactly as alone and no column is an unscored position. One shape, one compilation, almost no padding.

A block is K steps run as one device program (`step.block_fn`); steps past the end of an epoch or
before a resume point are marked dead (`live` False) and cost nothing. The order of steps depends only
on (seed, epoch, K), so a resumed run takes the same steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .errors import UserError

FEEDS = ("auto", "bucket", "packed", "stream")

# What `--feed auto` trains a language (or IMDb without --carry-state) on, per platform: from the
# interleaved epoch measurements in benchmarks/NOTES.md ("The packed feed"). Text corpora always
# train as a stream.
AUTO_FEED = {"cpu": "packed", "gpu": "packed", "cuda": "packed", "rocm": "packed", "tpu": "packed"}
# Steps per device call when train.steps_per_call is 0 (benchmarks/NOTES.md, "Steps per call").
AUTO_STEPS_PER_CALL = {"cpu": 16, "gpu": 32, "cuda": 32, "rocm": 32, "tpu": 32}
# The packed feed's window when data.chunk is not set: long enough that most strings of the built-in
# languages fit in one (the state is carried across windows; the gradient is cut at window edges),
# short enough for wide batches: on 2 CPU cores, brackets (300, 300), 15,000 strings, 10,000-token
# steps, windows of 32 ran 1.07x windows of 64 (benchmarks/NOTES.md, "The packed feed"). Where the
# strings cannot fill the budget's rows it doubles (stream.WindowFeed.packed), so that a step takes
# about the budget as bucket steps do; not for speed: at 307 rows and 60,000-token steps windows of 128
# and 32 ran 63.8 k and 60.4 k tokens/s by medians, with the spreads overlapping (attempt 38).
PACKED_WINDOW = 32


@dataclass
class Block:
    """K steps of one epoch, placed: `runner(state, data, xs, live)`."""

    data: Any  # the device matrix the steps read (a bucket's rows, or the stream matrix)
    xs: Any  # (K, B) row indices (bucket) or (K,) start columns (window), placed
    live: Any  # (K,) bool, placed
    live_np: np.ndarray  # (K,) bool on the host
    first: int  # the epoch's step index of xs[0]
    tokens: int  # real target tokens of its live steps

    @property
    def n_live(self) -> int:
        return int(self.live_np.sum())


def resolve_feed(feed: str, kind: str, *, carry_state: bool, platform: str | None = None) -> str:
    """The feed a run trains with: `kind` is the dataset's (`data.dataset_kind`)."""
    if feed not in FEEDS:
        raise UserError(f"--feed {feed!r} must be one of {', '.join(FEEDS)}")
    if kind == "text":
        if feed not in ("auto", "stream"):
            raise UserError(f"--feed {feed} does not apply to a text corpus, which trains as one stream; leave "
                            "--feed at auto (or stream)")
        return "stream"
    if feed == "stream" and kind != "imdb":
        raise UserError("--feed stream is for text corpora and IMDb; a language trains with --feed bucket or packed")
    if feed != "auto":
        return feed
    if kind == "imdb" and carry_state:
        return "stream"
    if platform is None:
        import jax

        platform = jax.default_backend()
    return AUTO_FEED.get(platform, "bucket")


def steps_per_call(cfg, platform: str | None = None) -> int:
    """K; with --eval-every or --sample-every, a divisor of them, so a window feed's blocks end on
    exactly those steps."""
    import math

    if cfg.train.steps_per_call > 0:
        K = cfg.train.steps_per_call
    else:
        if platform is None:
            import jax

            platform = jax.default_backend()
        K = AUTO_STEPS_PER_CALL.get(platform, 16)
    for every in (cfg.train.eval_every, cfg.train.sample_every):
        if every > 0:
            K = math.gcd(K, every)
    return K


def blocks_of(n_steps: int, K: int, start: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first step, live flags (K,)) of the blocks covering steps [start, n_steps) of an epoch, on the
    fixed grid of K: a resume from the middle of a block marks the steps before it dead."""
    for first in range((start // K) * K, n_steps, K):
        k = np.arange(first, first + K)
        yield first, (k >= start) & (k < n_steps)
