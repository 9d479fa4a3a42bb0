"""Token-budget batching on a few static shapes.

A row is `[.start, symbols..., .end]` (T + 1 ids for T predictions). Rows are grouped into at most
`max_buckets` length buckets chosen to minimise padding (dynamic programming over the sorted
lengths); bucket b has one static shape (batch_b, T_b + 1) with batch_b * T_b <= max_tokens, so the
jitted step compiles once per bucket. Each bucket's rows live on the device as one padded matrix;
an epoch is a shuffled list of (bucket, row indices), and the step gathers its batch on the device.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .data.vocab import END_ID, PAD_ID, START_ID, Ragged


@dataclass(frozen=True)
class Bucket:
    length: int  # T: predictions per row (row width T + 1)
    batch: int


@dataclass
class BucketPlan:
    buckets: list[Bucket]
    assignment: np.ndarray  # (n_rows,) bucket index of each row
    lengths: np.ndarray  # (n_rows,) T of each row

    def members(self, b: int) -> np.ndarray:
        return np.flatnonzero(self.assignment == b)

    def batches_per_epoch(self) -> int:
        return sum(-(-len(self.members(b)) // bk.batch) for b, bk in enumerate(self.buckets))

    def padded_tokens(self) -> int:
        return sum(-(-len(self.members(b)) // bk.batch) * bk.batch * bk.length
                   for b, bk in enumerate(self.buckets))

    def padding_fraction(self) -> float:
        total = self.padded_tokens()
        return 1.0 - float(self.lengths.sum()) / total if total else 0.0

    def describe(self) -> str:
        shapes = ", ".join(f"{bk.batch}x{bk.length}" for bk in self.buckets)
        return (f"{len(self.buckets)} bucket shapes (batch x length: {shapes}); "
                f"{self.batches_per_epoch()} batches/epoch; padding {100 * self.padding_fraction():.1f}%")


def make_rows(seqs: Ragged, chunk: int | None = None) -> Ragged:
    """Add the start and end markers; with `chunk`, cut each row into windows of at most `chunk`
    predictions that overlap by one id, so every symbol is predicted exactly once (from a fresh
    state at each window start: truncated back-propagation for very long texts)."""
    lens = seqs.lengths
    n = len(seqs)
    full_offsets = np.concatenate([[0], np.cumsum(lens + 2)])
    flat = np.empty(int(full_offsets[-1]), dtype=np.int32)
    flat[full_offsets[:-1]] = START_ID
    flat[full_offsets[1:] - 1] = END_ID
    inner = np.ones(len(flat), bool)
    inner[full_offsets[:-1]] = False
    inner[full_offsets[1:] - 1] = False
    flat[inner] = seqs.flat[: int(lens.sum())] if n else flat[inner]
    rows = Ragged(flat, full_offsets)
    if chunk is None or n == 0 or (lens + 1).max() <= chunk:
        return rows
    starts, ends = [], []
    for i in range(n):
        a, b = int(full_offsets[i]), int(full_offsets[i + 1])
        for s in range(a, b - 1, chunk):
            starts.append(s)
            ends.append(min(s + chunk + 1, b))
    starts, ends = np.array(starts), np.array(ends)
    wl = ends - starts
    offsets = np.concatenate([[0], np.cumsum(wl)])
    pos = np.repeat(starts - offsets[:-1], wl) + np.arange(offsets[-1])
    return Ragged(flat[pos], offsets)


def _padded_cost(L: int, cnt: np.ndarray, max_tokens: int) -> np.ndarray:
    """Tokens a bucket of length L holding `cnt` rows occupies, its last partial batch included."""
    batch = np.minimum(max(1, max_tokens // L), np.maximum(cnt, 1))
    return np.ceil(cnt / batch) * batch * L


def _choose_lengths(values: np.ndarray, counts: np.ndarray, k: int, max_tokens: int) -> list[int]:
    """Bucket lengths (upper bounds) minimising the padded tokens of an epoch: optimal 1-D partition
    by dynamic programming over at most ~256 candidate boundaries."""
    if len(values) > 256:
        cand = np.unique(np.concatenate([np.quantile(np.repeat(values, counts), np.linspace(0, 1, 256),
                                                     method="higher"), values[-1:]])).astype(int)
        # Rebin the counts onto the candidate grid (each value goes to the next candidate up).
        where = np.searchsorted(cand, values)
        counts = np.bincount(where, weights=counts, minlength=len(cand))
        values = cand
    n = len(values)
    k = min(k, n)
    csum = np.concatenate([[0], np.cumsum(counts)])
    INF = float("inf")
    # cost[j][i]: best cost covering values[:i] with j buckets, the last one covering (a, i].
    cost = np.full((k + 1, n + 1), INF)
    back = np.zeros((k + 1, n + 1), dtype=int)
    cost[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            a = np.arange(0, i)
            c = cost[j - 1, a] + _padded_cost(int(values[i - 1]), csum[i] - csum[a], max_tokens)
            m = int(np.argmin(c))
            cost[j, i], back[j, i] = c[m], m
    j = int(np.argmin(cost[1:, n])) + 1
    bounds, i = [], n
    while j > 0:
        bounds.append(int(values[i - 1]))
        i = back[j, i]
        j -= 1
    return sorted(bounds)


def plan_buckets(lengths: np.ndarray, max_tokens: int, max_buckets: int = 8, multiple: int = 1,
                 cap_batch: bool = True) -> BucketPlan:
    """`lengths`: T (predictions) per row. Batch sizes are multiples of `multiple` (the device count)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    fits = lengths <= max_tokens // multiple
    values, counts = np.unique(lengths[fits], return_counts=True)
    bounds = _choose_lengths(values, counts, max_buckets, max_tokens) if len(values) else []
    too_long = np.unique(lengths[~fits])
    if len(too_long):
        warnings.warn(f"{int((~fits).sum())} rows are longer than the token budget allows "
                      f"(max {max_tokens // multiple} per row); each such length gets a bucket of "
                      f"batch {multiple}. Raise --max-tokens or set a --chunk length.", stacklevel=2)
    all_bounds = np.array(bounds + too_long.tolist(), dtype=np.int64)
    assignment = np.searchsorted(all_bounds, lengths)
    buckets = []
    for b, L in enumerate(all_bounds.tolist()):
        batch = max(multiple, (max_tokens // L) // multiple * multiple)
        if cap_batch:  # a bucket of 3 rows should not compile a 1000-row shape
            n_b = int((assignment == b).sum())
            batch = min(batch, max(multiple, -(-n_b // multiple) * multiple))
        buckets.append(Bucket(int(L), int(batch)))
    return BucketPlan(buckets, assignment, lengths)


def pad_rows(rows: Ragged, idx: np.ndarray, width: int, extra_pad_row: bool = True) -> np.ndarray:
    """Rows `idx` as a (len(idx) [+1], width) int32 matrix padded with PAD; the optional last row is
    all padding (batches are filled up with it)."""
    sub = rows.take(idx)
    lens = sub.lengths
    out = np.full((len(idx) + int(extra_pad_row), width), PAD_ID, dtype=np.int32)
    if len(idx):
        r = np.repeat(np.arange(len(idx)), lens)
        c = np.arange(len(sub.flat)) - np.repeat(sub.offsets[:-1], lens)
        out[r, c] = sub.flat
    return out


def epoch_order(plan: BucketPlan, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """Shuffled (bucket, row positions within the bucket) batches for one epoch; position n_b is the
    all-padding row. Depends only on (seed, epoch), so a resumed run sees the same order."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for b, bk in enumerate(plan.buckets):
        n_b = len(plan.members(b))
        perm = rng.permutation(n_b)
        fill = (-n_b) % bk.batch
        perm = np.concatenate([perm, np.full(fill, n_b)]).astype(np.int32)
        batches.extend((b, chunk) for chunk in perm.reshape(-1, bk.batch))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def fixed_order(plan: BucketPlan) -> list[tuple[int, np.ndarray]]:
    """Every row once, bucket by bucket, in order (evaluation)."""
    out = []
    for b, bk in enumerate(plan.buckets):
        n_b = len(plan.members(b))
        fill = (-n_b) % bk.batch
        pos = np.concatenate([np.arange(n_b), np.full(fill, n_b)]).astype(np.int32)
        out.extend((b, chunk) for chunk in pos.reshape(-1, bk.batch))
    return out


# ---------------------------------------------------------------- a split on the device
@dataclass
class BucketedSplit:
    """A split's rows as one padded device matrix per bucket (last row all padding), with its plan:
    what training iterates and what every scoring of a split (validation CE, per-sequence
    log-probabilities) iterates too."""

    plan: BucketPlan
    data: list  # per bucket: device array (n_b + 1, L + 1) int32
    n_tokens: int  # real predictions (padding excluded)
    placement: object  # parallel.Placement
    members: list  # per bucket: positions (in the split) of its rows, in matrix order
    lengths: list  # per bucket: T of each of its rows

    @classmethod
    def build(cls, seqs: Ragged, max_tokens: int, max_buckets: int, placement, chunk=None,
              cap_batch: bool = True) -> "BucketedSplit":
        """The plan does not depend on the device count, so a run's batches are the same on any
        machine; `batch` fills each one up to a multiple of the devices with padding rows."""
        import sys

        rows = make_rows(seqs, chunk)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = plan_buckets(rows.lengths - 1, max_tokens, max_buckets, cap_batch=cap_batch)
        for w in caught[:1]:
            print(f"warning: {w.message}", file=sys.stderr)
        members = [plan.members(b) for b in range(len(plan.buckets))]
        data = [placement.put_rows(pad_rows(rows, m, bk.length + 1)) for m, bk in zip(members, plan.buckets)]
        return cls(plan, data, int((rows.lengths - 1).sum()), placement, members,
                   [plan.lengths[m] for m in members])

    def batch(self, b: int, idx: np.ndarray):
        """(bucket matrix, placed row positions) for a step: `step(state, *split.batch(b, idx))`."""
        return self.data[b], self.placement.put_idx(idx, self.data[b].shape[0] - 1)

    def real_tokens(self, b: int, idx: np.ndarray) -> int:
        """Real (unpadded) predictions in one batch."""
        lens = self.lengths[b]
        return int(lens[idx[idx < len(lens)]].sum())

    def score(self, eval_step, params) -> tuple[float, float]:
        """(cross-entropy in bits per token, number of tokens) over the whole split."""
        from .data.base import LN2

        tot = 0.0, 0.0
        for b, idx in fixed_order(self.plan):
            nll, n = eval_step(params, *self.batch(b, idx))
            tot = (tot[0] + nll, tot[1] + n)
        nll, n = float(tot[0]), float(tot[1])
        return nll / max(n, 1.0) / LN2, n


# ---------------------------------------------------------------- the bucket feed
class BucketFeed:
    """`--feed bucket` (feeds.py): the course's batching. Every epoch each bucket's rows are shuffled
    into batches and all batches are taken in a random order, one step per device call (a block of
    one: the shape changes from step to step; grouping a bucket's batches into runs of K steps, tried
    first, put up to K batches of one length in a row and cost the brackets preset most of its
    accuracy, benchmarks/NOTES.md).

    Which bucket comes at which step depends on the data seed and the epoch; the rows in each batch on
    the run's own seed. So the members of a sweep with other seeds take the same shape at the same
    step and train together as one program, each on its own order of strings, exactly as alone."""

    kind = "bucket"

    def __init__(self, cfg, ds, placement, K: int, seeds: list[int] | None = None):
        from .step import StepSpec

        self.split = BucketedSplit.build(ds.train, cfg.train.max_tokens, cfg.train.max_buckets, placement,
                                         cfg.data.chunk)
        self.plan = self.split.plan
        self.place, self.K, self.data_seed = placement, 1, cfg.data.seed
        self.seeds = list(seeds) if seeds is not None else [cfg.train.seed]
        self.members = len(self.seeds)
        self.spec = StepSpec()
        self.steps_per_epoch = self.plan.batches_per_epoch()
        self.tokens_per_epoch = self.split.n_tokens

    def describe(self) -> str:
        return f"bucket feed: {self.plan.describe()}"

    def init_carry(self):
        return None

    def steps_in(self, epoch: int) -> np.ndarray:
        return np.full(self.members, self.steps_per_epoch)

    def first_step(self, epoch: int) -> np.ndarray:
        return np.full(self.members, epoch * self.steps_per_epoch)

    def _order(self, epoch: int) -> np.ndarray:
        """The bucket of each step of the epoch: the data seed's shuffle of every bucket's batches."""
        counts = [-(-len(m) // bk.batch) for m, bk in zip(self.split.members, self.plan.buckets)]
        which = np.repeat(np.arange(len(counts)), counts)
        return which[np.random.default_rng([self.data_seed, epoch, 1]).permutation(len(which))]

    def _batches_of(self, seed: int, epoch: int) -> list[np.ndarray]:
        """Per bucket, (batches, batch) row positions in this run's shuffled order; the last batch filled
        up with the all-padding row."""
        rng = np.random.default_rng([seed, epoch])
        out = []
        for b, bk in enumerate(self.plan.buckets):
            n_b = len(self.split.members[b])
            perm = np.concatenate([rng.permutation(n_b), np.full((-n_b) % bk.batch, n_b)]).astype(np.int32)
            out.append(perm.reshape(-1, bk.batch))
        return out

    def blocks(self, epoch: int, start: int = 0):
        from .feeds import Block

        per_member = [self._batches_of(s, epoch) for s in self.seeds]
        taken = np.zeros(len(self.plan.buckets), int)
        live = np.ones((self.members, 1), bool)
        for pos, b in enumerate(self._order(epoch)):
            j = taken[b]
            taken[b] += 1
            if pos < start:
                continue
            n_b = len(self.split.members[b])
            idx = np.stack([batches[b][j] for batches in per_member])[:, None, :]  # (M, 1, batch)
            tokens = np.array([self.split.real_tokens(b, row[0]) for row in idx])
            xs, lv = self.place.put_block(self.place.pad_idx(idx, n_b), live, members=self.members > 1)
            yield Block(self.split.data[b], xs, lv, live.copy(), pos, tokens)

    def examples(self, state) -> list:
        out = []
        for b, bk in enumerate(self.plan.buckets):
            idx = self.place.pad_idx(np.zeros((self.members, 1, bk.batch), np.int32), 0)
            xs, lv = self.place.put_block(idx, np.zeros((self.members, 1), bool), members=self.members > 1)
            out.append((state, self.split.data[b], xs, lv))
        return out
