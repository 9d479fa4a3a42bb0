"""The window feeds (`stream`, `packed`; feeds.py) and scoring a stream.

Training on a stream the way char-rnn and the PTB LSTM papers do: the stream is cut into B contiguous
rows kept on the device as one (B, cols) matrix, split over the mesh by rows; step k reads the window
of `chunk` + 1 columns starting at k * chunk (+ an epoch offset) with one dynamic slice, and the LSTM
state at the window's end is the next window's initial state (gradients stop at the window edge, the
state does not reset). One shape, so one compilation; per block of K steps only K scalars cross to
the device.

The packed feed lays strings end to end the same way, each as `.start` and its symbols, whole strings
to a row (rows are filled to equal length, the last one padded), a new random order every epoch; the
state is zeroed at every `.start`, and a `.start` target is scored as the previous string's `.end`
(which as an input would only feed a state about to be zeroed), so a string's log-probability is
exactly what it is alone (`score_packed` checks it) and no column is spent on an unscored position.

Scoring: `score_stream` walks the whole split with the state carried (unlimited context; a long split
is cut into a few long segments scored side by side), `score_windows` scores non-overlapping windows
of `window` tokens that each start from a zero state, every position counted — nanoGPT's protocol
with block_size = window, the one that compares with a transformer's val loss.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .config import RunConfig
from .data.base import LN2
from .data.vocab import END_ID, PAD_ID, START_ID, Ragged
from .model import LSTMState, apply_tm, zero_state
from .step import StepSpec, packed_targets


def default_chunk(cfg: RunConfig) -> int:
    return cfg.data.chunk or 64


def rows_for(max_tokens: int, chunk: int, n_devices: int = 1) -> int:
    """B rows of `chunk` tokens under the token budget: a multiple of 8 from 8 on (so 1, 2, 4 or 8
    devices give the same layout and a checkpoint moves between them), then of the devices."""
    B = max(1, max_tokens // chunk)
    if B >= 8:
        B -= B % 8
    return -(-B // n_devices) * n_devices


def layout(n_tokens: int, max_tokens: int, chunk: int, n_devices: int = 1) -> tuple[int, int]:
    """(B streams, columns per stream) for a training stream under the token budget."""
    B = max(1, min(rows_for(max_tokens, chunk), (n_tokens - 1) // (2 * chunk)))
    B = -(-B // n_devices) * n_devices
    cols = n_tokens // B
    return B, cols


def windows_per_epoch(cols: int, chunk: int) -> int:
    # The epoch offset is below `chunk`, so every epoch has the same number of full windows.
    return max(1, (cols - chunk) // chunk)


def epoch_offset(seed: int, epoch: int, chunk: int, cols: int) -> int:
    """Window boundaries move every epoch (the same for a resumed run): the model never sees one
    fixed cut of the stream."""
    if cols - 1 < 2 * chunk:
        return 0
    return int(np.random.default_rng([seed, epoch, 7]).integers(0, chunk))


def stream_matrix(ids: np.ndarray, B: int, cols: int) -> np.ndarray:
    """The first B * cols tokens as B rows; a row of padding for each stream the tokens cannot fill
    (more devices than a tiny stream has rows)."""
    ids = np.asarray(ids[: B * cols], dtype=np.int32)
    out = np.full(B * cols, PAD_ID, np.int32)
    out[: len(ids)] = ids
    return out.reshape(B, cols)


def lpt_slots(lens: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray]:
    """(row of the i-th longest string, tokens of each row): longest first, each to the row that holds
    the fewest tokens so far (LPT), so the rows end within a short string of each other and of
    max(sum / B, the longest string). It depends only on the multiset of lengths, so it is computed
    once per run; an epoch only decides which string of each length takes which slot."""
    import heapq

    order = np.sort(lens)[::-1]
    heap = [(0, r) for r in range(B)]
    slot_row = np.empty(len(order), np.int64)
    for i, L in enumerate(order.tolist()):
        load, r = heapq.heappop(heap)
        slot_row[i] = r
        heapq.heappush(heap, (load + L, r))
    return slot_row, np.bincount(slot_row, weights=order, minlength=B).astype(np.int64)


def assign_rows(lens: np.ndarray, B: int, rank: np.ndarray | None = None,
                slots: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row of each string, tokens of each row) for framed strings of `lens` (`lpt_slots`); strings of
    equal length take their slots in `rank` order (the epoch's random order)."""
    n = len(lens)
    rank = np.arange(n) if rank is None else rank
    slot_row, row_len = slots if slots is not None else lpt_slots(lens, B)
    order = np.lexsort((rank, -lens))  # the i-th longest string (ties in the epoch's order)
    row = np.empty(n, np.int64)
    row[order] = slot_row
    return row, row_len


def packed_lengths(seqs: Ragged) -> np.ndarray:
    """Columns each string takes in a packed row: `.start` and its symbols. Its `.end` is never an
    input (the state is zeroed after it), so it shares a column with the next string's `.start`, which
    as a target is scored as `.end` (`step.packed_targets`); a row's last string gets one `.end`."""
    return seqs.lengths + 1


def pack_rows(seqs: Ragged, order: np.ndarray, B: int, width: int,
              slots: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """The strings of `seqs`, each as `.start` symbols (`packed_lengths`), laid end to end into B rows
    of `width` columns: whole strings to a row (`assign_rows`), each row's strings in the epoch's random
    `order`, then one `.end`, then padding. Returns (matrix (B, width) int32, the longest row's length
    with its `.end`, the strings in the matrix's row-major order)."""
    lens = packed_lengths(seqs)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))  # position of each string in the epoch's order
    row, row_len = assign_rows(lens, B, rank, slots)
    seq = np.lexsort((rank, row))  # by row, then in the epoch's order within the row
    flat = seqs.framed(seq, end=False)
    total = int(row_len.sum())
    row_start = np.concatenate([[0], np.cumsum(row_len)[:-1]])
    longest = int(row_len.max()) + 1 if B else 0
    if longest > width:
        raise ValueError(f"a packed row needs {longest} columns, more than {width}")
    out = np.full((B, width), PAD_ID, np.int32)
    r = np.repeat(np.arange(B), row_len)
    c = np.arange(total) - np.repeat(row_start, row_len)
    out[r, c] = flat
    full = np.flatnonzero(row_len)
    out[full, row_len[full]] = END_ID
    return out, longest, seq


def _window_nll(params, window, carry: LSTMState, cfg: RunConfig, dropout_key=None):
    """window (B, chunk + 1) -> (sum of -log p of the chunk's targets, new LSTMState)."""
    tok = window.T  # (chunk + 1, B)
    logits, state = apply_tm(params, tok[:-1], carry, cfg=cfg.model, dropout_key=dropout_key)  # (T, B, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.sum(logp * jax.nn.one_hot(tok[1:], logits.shape[-1], dtype=logp.dtype), axis=-1)  # (T, B)
    lp = jnp.where(tok[1:] != PAD_ID, lp, 0.0)
    return -lp.sum(), state


def zero_carry(cfg: RunConfig, B: int):
    # Two buffers, not one shared: the carry is donated with the state.
    shape = (cfg.model.layers, B, cfg.model.hidden)
    return (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))


# ---------------------------------------------------------------- scoring
@partial(jax.jit, static_argnames=("cfg",))
def _score_block(params, carry, block, *, cfg: RunConfig):
    """block (S, W + 1) of (inputs, targets) with PAD targets masked -> (nll sum, count, new carry)."""
    nll, state = _window_nll(params, block, LSTMState(*carry), cfg)
    return nll, (block[:, 1:] != PAD_ID).sum(), tuple(state)


def score_stream(params, cfg: RunConfig, ids: np.ndarray, *, block: int = 512, min_segment: int = 1 << 14,
                 max_segments: int = 64) -> tuple[float, int]:
    """(nats, targets) over a whole split, the state carried from its first token to its last.

    A split longer than 2 * min_segment is cut into up to max_segments contiguous segments scored
    side by side (each from a zero state): a few cold starts in millions of tokens, for a batch the
    device can use. Every token after the first is a target exactly once."""
    ids = np.asarray(ids, dtype=np.int32)
    n_targets = len(ids) - 1
    S = int(np.clip(n_targets // min_segment, 1, max_segments))
    L = -(-n_targets // S)  # targets per segment
    L = -(-L // block) * block
    padded = np.full(S * L + 1, PAD_ID, np.int32)
    padded[: len(ids)] = ids
    # Segment s reads inputs padded[s*L : s*L + L] and targets one further; the overlap token is the
    # last target of segment s and the first input of s + 1.
    seg = np.stack([padded[s * L: s * L + L + 1] for s in range(S)])  # (S, L + 1)
    data = jnp.asarray(seg)
    carry = zero_carry(cfg, S)
    tot_nll, tot_n = jnp.float32(0.0), jnp.int32(0)
    for k in range(L // block):
        nll, n, carry = _score_block(params, carry, jax.lax.dynamic_slice_in_dim(data, k * block, block + 1, axis=1),
                                     cfg=cfg)
        tot_nll, tot_n = tot_nll + nll, tot_n + n
    return float(tot_nll), int(tot_n)


@partial(jax.jit, static_argnames=("cfg",))
def _score_windows(params, rows, *, cfg: RunConfig):
    nll, _ = _window_nll(params, rows, zero_state(cfg.model, rows.shape[0]), cfg)
    return nll, (rows[:, 1:] != PAD_ID).sum()


def score_windows(params, cfg: RunConfig, ids: np.ndarray, window: int = 64, batch: int = 512) -> tuple[float, int]:
    """(nats, targets) over non-overlapping windows: inputs ids[i*w : i*w + w], targets one further,
    each window from a zero state."""
    ids = np.asarray(ids, dtype=np.int32)
    n_win = (len(ids) - 1) // window
    if n_win == 0:
        return 0.0, 0
    starts = np.arange(n_win) * window
    rows = ids[starts[:, None] + np.arange(window + 1)]  # (n_win, window + 1)
    pad = (-n_win) % batch if n_win > batch else 0
    rows = np.concatenate([rows, np.full((pad, window + 1), PAD_ID, np.int32)])
    b = min(batch, len(rows))
    tot_nll, tot_n = jnp.float32(0.0), jnp.int32(0)
    for i in range(0, len(rows), b):
        nll, n = _score_windows(params, jnp.asarray(rows[i: i + b]), cfg=cfg)
        tot_nll, tot_n = tot_nll + nll, tot_n + n
    return float(tot_nll), int(tot_n)


def stream_metrics(params, cfg: RunConfig, ids: np.ndarray, *, unit: str, window: int = 64) -> dict:
    """The text-corpus figures of one split: per token in bits and nats, perplexity, continuous and
    nanoGPT-style windows."""
    nll, n = score_stream(params, cfg, ids)
    wnll, wn = score_windows(params, cfg, ids, window)
    per = "char" if unit == "char" else "token"
    bits = nll / max(n, 1) / LN2
    wbits = wnll / max(wn, 1) / LN2
    return {"n_tokens": n, "ce_bits_per_token": bits, f"bits_per_{per}": bits, f"nats_per_{per}": bits * LN2,
            "perplexity": float(2.0 ** bits), f"bits_per_{per}_window{window}": wbits,
            f"nats_per_{per}_window{window}": wbits * LN2, "window": window}




def score_packed(params, cfg: RunConfig, seqs: Ragged, *, B: int = 8, chunk: int = 16) -> np.ndarray:
    """Natural-log probability of each string (every symbol and the end marker) taken from packed
    windows, as the packed feed trains on them: a check of the feed against scoring strings alone."""
    order = np.arange(len(seqs))
    lens = packed_lengths(seqs)
    width = int(np.ceil((lens.sum() / B + lens.max() + 1) / chunk)) * chunk + 1
    mat, _, seq = pack_rows(seqs, order, B, width)
    carry = zero_state(cfg.model, B)
    lps = []
    for k in range((width - 1) // chunk):
        window = jnp.asarray(mat[:, k * chunk: k * chunk + chunk + 1])
        lp, carry = _packed_window_logprobs(params, window, carry, cfg=cfg)
        lps.append(np.asarray(lp))
    lp = np.concatenate(lps, axis=1)  # (B, width - 1): log p of mat[:, 1:]
    tgt = mat[:, 1:]
    # Each target belongs to the string whose .start came last before it.
    flat_t, flat_lp = tgt.reshape(-1), lp.reshape(-1)
    is_start = (mat[:, :-1] == START_ID).reshape(-1)
    string_no = seq[np.cumsum(is_start) - 1]  # the string each target belongs to
    scored = flat_t != PAD_ID
    return np.bincount(string_no[scored], weights=flat_lp[scored], minlength=len(seqs))


@partial(jax.jit, static_argnames=("cfg",))
def _packed_window_logprobs(params, window, carry, *, cfg: RunConfig):
    tok = window.T
    resets = tok[:-1] == START_ID
    logits, state = apply_tm(params, tok[:-1], carry, cfg=cfg.model, resets=resets)
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.sum(logp * jax.nn.one_hot(packed_targets(tok[1:]), logits.shape[-1], dtype=logp.dtype), axis=-1)
    return lp.T, state  # (B, T)


# ---------------------------------------------------------------- the window feeds
class WindowFeed:
    """`--feed stream` and `--feed packed` (feeds.py): a (B, cols) device matrix walked in windows of
    `chunk` tokens, K windows to a block, the LSTM state in the train state's "carry".

    For the members of a sweep (`seeds`), a stream's window boundaries move by each member's own epoch
    offset, and a packed epoch is each member's own order of strings (a (M, B, cols) matrix); a member
    whose packed epoch is shorter than the longest one has its last steps marked dead."""

    def __init__(self, cfg: RunConfig, placement, K: int, *, kind: str, chunk: int, B: int, cols: int,
                 carry: bool, packed: bool, nwin: int, tokens_per_epoch: int, about: str,
                 seeds: list[int] | None = None):
        self.kind, self.cfg, self.place, self.K = kind, cfg, placement, K
        self.chunk, self.B, self.cols, self.nwin = chunk, B, cols, nwin
        self.seeds = list(seeds) if seeds is not None else [cfg.train.seed]
        self.members = len(self.seeds)
        self.spec = StepSpec(window=chunk, carry=carry, packed=packed)
        self.steps_per_epoch = nwin  # at most; `steps_in(epoch)` is exact
        self.tokens_per_epoch = tokens_per_epoch
        self.about = about
        self._data = None  # (epoch, device matrix)
        self._steps: dict[tuple[int, int], int] = {}

    # ---- constructors
    @classmethod
    def stream(cls, cfg: RunConfig, ds, placement, K: int, seeds=None) -> "WindowFeed":
        """A text corpus (or IMDb --carry-state): ds.info["train_stream"]() gives the token stream."""
        from .errors import UserError

        chunk = default_chunk(cfg)
        _check_budget(cfg, chunk)
        ts = ds.info["train_stream"]()
        ids = ts["train"]
        B, cols = layout(len(ids), cfg.train.max_tokens, chunk, placement.n_devices)
        if cols < chunk + 1:
            raise UserError(f"--chunk {chunk} is longer than the training stream ({len(ids):,} tokens); lower "
                            f"--chunk to at most {max(2, len(ids) // 2 - 1)}")
        nwin = windows_per_epoch(cols, chunk)
        feed = cls(cfg, placement, K, kind="stream", chunk=chunk, B=B, cols=cols, carry=cfg.data.carry_state,
                   packed=False, nwin=nwin, tokens_per_epoch=B * chunk * nwin, seeds=seeds,
                   about=f"{B} streams x {cols:,} {ts['unit']}s, windows of {chunk}, state "
                         f"{'carried' if cfg.data.carry_state else 'reset each window'}")
        feed._matrix = stream_matrix(ids, B, cols)
        feed.stream_info = ts
        return feed

    @classmethod
    def packed(cls, cfg: RunConfig, ds, placement, K: int, seeds=None) -> "WindowFeed":
        """A language's (or IMDb's) training strings, packed anew every epoch."""
        chunk = cfg.data.chunk or _packed_window()
        _check_budget(cfg, chunk)
        seqs = ds.train
        lens = packed_lengths(seqs)
        nd = placement.n_devices
        # No more rows than the longest string fits into (sum / B >= longest): the rows are then as
        # long as the strings need and no row waits in padding for the longest one.
        fit = max(1, int(lens.sum() // lens.max()))
        B = min(rows_for(cfg.train.max_tokens, chunk, nd), max(nd, fit // nd * nd))
        slots = lpt_slots(lens, B)
        need = int(slots[1].max()) + 1
        if not cfg.data.chunk:
            # Too few strings to fill the budget's rows: longer windows use the budget instead (a step
            # of about --max-tokens tokens, as the bucket feed takes), fewer and larger steps.
            while 2 * chunk * B <= cfg.train.max_tokens and chunk < need - 1:
                chunk *= 2
        nwin = -(-(need - 1) // chunk)
        feed = cls(cfg, placement, K, kind="packed", chunk=chunk, B=B, cols=nwin * chunk + 1, carry=True,
                   packed=True, nwin=nwin, tokens_per_epoch=int((seqs.lengths + 1).sum()), seeds=seeds,
                   about=f"{len(seqs):,} strings packed into {B} rows of {nwin * chunk + 1:,} tokens, windows of "
                         f"{chunk}, the state zeroed at each .start")
        feed._seqs, feed._slots = seqs, slots
        return feed

    # ---- the interface
    def describe(self) -> str:
        return f"{self.kind} feed: {self.about}; {self.nwin} steps per epoch, {self.K} per call"

    def init_carry(self):
        shape = (self.cfg.model.layers, self.B, self.cfg.model.hidden)
        if self.members > 1:
            shape = (self.members,) + shape
        return (np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(self._seqs))

    def _steps_of(self, seed: int, epoch: int) -> int:
        """Windows one run's epoch takes: its longest row's (the same in every epoch, `assign_rows`)."""
        return self.nwin

    def steps_in(self, epoch: int) -> np.ndarray:
        return np.array([self._steps_of(s, epoch) for s in self.seeds])

    def first_step(self, epoch: int) -> np.ndarray:
        """Steps each run has taken before `epoch` starts."""
        return np.array([sum(self._steps_of(s, e) for e in range(epoch)) for s in self.seeds])

    def _epoch_data(self, epoch: int):
        if self._data is not None and self._data[0] == epoch:
            return self._data[1]
        if self.kind == "stream":
            data = self._data[1] if self._data is not None else self.place.put_streams(self._matrix)
        else:
            mats = [pack_rows(self._seqs, self._order(s, epoch), self.B, self.cols, self._slots)[0] for s in self.seeds]
            data = self.place.put_streams(mats[0] if self.members == 1 else np.stack(mats), members=self.members > 1)
        self._data = (epoch, data)
        return data

    def _offset(self, seed: int, epoch: int) -> int:
        return epoch_offset(seed, epoch, self.chunk, self.cols) if self.kind == "stream" else 0

    def blocks(self, epoch: int, start: int = 0):
        from .feeds import Block, blocks_of

        data = self._epoch_data(epoch)
        offs = np.array([self._offset(s, epoch) for s in self.seeds])
        n_m = self.steps_in(epoch)
        per_step = self.tokens_per_epoch / n_m
        for first, _ in blocks_of(int(n_m.max()), self.K, start):
            k = first + np.arange(self.K)
            live = (k[None, :] >= start) & (k[None, :] < n_m[:, None])  # (M, K)
            starts = (offs[:, None] + k[None, :] * self.chunk).astype(np.int32)
            starts = np.minimum(starts, self.cols - self.chunk - 1)  # dead steps past the end stay in range
            xs, lv = self.place.put_block(starts, live, members=self.members > 1)
            yield Block(data, xs, lv, live, first, np.round(per_step * live.sum(axis=1)).astype(np.int64))

    def examples(self, state) -> list:
        data = self._epoch_data(0) if self._data is None else self._data[1]
        xs, lv = self.place.put_block(np.zeros((self.members, self.K), np.int32),
                                      np.zeros((self.members, self.K), bool), members=self.members > 1)
        return [(state, data, xs, lv)]


def _check_budget(cfg: RunConfig, chunk: int) -> None:
    if cfg.train.max_tokens < chunk:
        from .errors import UserError

        raise UserError(f"--max-tokens {cfg.train.max_tokens} is below the window of {chunk} tokens a step takes per "
                        f"row; raise --max-tokens to {chunk} or more, or lower --chunk")


def _packed_window() -> int:
    from .feeds import PACKED_WINDOW

    return PACKED_WINDOW
