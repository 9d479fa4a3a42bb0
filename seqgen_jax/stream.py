"""Training on a token stream with truncated backpropagation through time, and scoring a stream.

The way char-rnn and the PTB LSTM papers train: the training stream is cut into B contiguous
segments, one per batch row, kept on the device as one (B, cols) matrix; step k reads the window of
`chunk` + 1 columns starting at k * chunk (+ an epoch offset) with one dynamic slice, and the LSTM
state at the window's end is the next window's initial state (gradients stop at the window edge, the
state does not reset). One shape, so one compilation; per step only a scalar crosses to the device.

Scoring: `score_stream` walks the whole split with the state carried (unlimited context; a long split
is cut into a few long segments scored side by side), `score_windows` scores non-overlapping windows
of `window` tokens that each start from a zero state, every position counted — nanoGPT's protocol
with block_size = window, the one that compares with a transformer's val loss.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .data.base import LN2
from .config import RunConfig
from .data.vocab import PAD_ID
from .model import LSTMState, apply_tm, zero_state



def default_chunk(cfg: RunConfig) -> int:
    return cfg.data.chunk or 128


def layout(n_tokens: int, max_tokens: int, chunk: int) -> tuple[int, int]:
    """(B streams, columns per stream) for a training stream under the token budget."""
    B = max(1, min(max_tokens // chunk, (n_tokens - 1) // (2 * chunk)))
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
    return np.asarray(ids[: B * cols], dtype=np.int32).reshape(B, cols)


def _window_nll(params, window, carry: LSTMState, cfg: RunConfig, dropout_key=None):
    """window (B, chunk + 1) -> (sum of -log p of the chunk's targets, new LSTMState)."""
    tok = window.T  # (chunk + 1, B)
    logits, state = apply_tm(params, tok[:-1], carry, cfg=cfg.model, dropout_key=dropout_key)  # (T, B, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.sum(logp * jax.nn.one_hot(tok[1:], logits.shape[-1], dtype=logp.dtype), axis=-1)  # (T, B)
    lp = jnp.where(tok[1:] != PAD_ID, lp, 0.0)
    return -lp.sum(), state


def make_stream_step(cfg: RunConfig, tx, chunk: int):
    """step(state, data (B, cols) int32, start int32) -> (state, {"loss", "grad_norm"}); state carries
    "carry": the LSTMState after the previous window (zeros at an epoch's start)."""
    from .step import apply_grads, dropout_key

    carry_on = cfg.data.carry_state

    def step(state, data, start):
        B = data.shape[0]
        window = jax.lax.dynamic_slice(data, (jnp.int32(0), start), (B, chunk + 1))
        carry = LSTMState(*jax.lax.stop_gradient(state["carry"])) if carry_on else zero_state(cfg.model, B)
        key = dropout_key(cfg, state["step"])

        def loss(params):
            return _window_nll(params, window, carry, cfg, key)

        (nll, new_carry), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
        n = (window[:, 1:] != PAD_ID).sum().astype(jnp.float32)
        core = {k: v for k, v in state.items() if k != "carry"}
        new, metrics = apply_grads(tx, core, nll, n, grads)
        new["carry"] = tuple(new_carry)
        return new, metrics

    return jax.jit(step, donate_argnums=(0,))


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


# ---------------------------------------------------------------- the loop
def _sample_text(params, cfg: RunConfig, vocab, n: int, temperature: float, seed: int, max_len: int,
                 framed: bool) -> list[str]:
    from .sample import sample

    s = sample(params, cfg.model, vocab, n=n, key=jax.random.key(seed), temperature=temperature,
               max_len=max_len, stream=not framed, unk_seen=cfg.data.voc is not None)
    return s.texts(vocab)


def train_stream(cfg: RunConfig, run, ds, *, resume: bool, log, primary: bool, t_start: float) -> dict:
    """The loop for text streams: windows in order, state carried, one record per epoch (and every
    `eval_every` steps), a progress line about every 10 s, resumable from any checkpoint."""
    import time

    from .model import count_params
    from .step import init_train_state, make_optimizer, make_schedule, set_horizon, zero_acc
    from .train import (_fmt_time, _flush_step_record, close_epoch, open_run, record_epoch, save_at_deadline,
                        start_fit)

    chunk = default_chunk(cfg)
    ts = ds.info["train_stream"]()  # {"train", "val": token arrays, "framed", "unit", "about"}
    train_ids, val_ids, unit = ts["train"], ts["val"], ts["unit"]
    B, cols = layout(len(train_ids), cfg.train.max_tokens, chunk)
    if cols < chunk + 1:
        from .errors import UserError

        raise UserError(f"--chunk {chunk} is longer than the training stream ({len(train_ids):,} tokens); lower "
                        f"--chunk to at most {max(2, len(train_ids) // 2 - 1)}")
    nwin = windows_per_epoch(cols, chunk)
    total = nwin * cfg.train.epochs
    tx, schedule = make_optimizer(cfg, total), make_schedule(cfg, total)
    dev = jax.local_devices()[0]
    state = init_train_state(cfg, tx)
    state["carry"] = zero_carry(cfg, B)
    state = jax.device_put(state, dev)
    log(f"{ds.spec}: {len(train_ids):,} train / {len(val_ids):,} val {unit}s ({ts['about']}), "
        f"vocab {len(ds.vocab)}; model "
        f"{cfg.model.embed}/{cfg.model.hidden}x{cfg.model.layers} ({count_params(state['params']):,} params) on "
        f"{dev.platform}")
    log(f"train: {B} streams x {cols:,} {unit}s, windows of {chunk}, {nwin} steps per epoch, state "
        f"{'carried' if cfg.data.carry_state else 'reset each window'}")
    opened = open_run(cfg, run, ds, state, resume, primary, log)
    if opened.finished is not None:
        return opened.finished
    ckpt, state, best_val = opened.ckpt, jax.device_put(opened.state, dev), opened.best_val
    # One device. On CPU, XLA already spreads this step over the cores (taskset to one core: 20k vs
    # 31k chars/s for (256, 256), B = 32, chunk 64), and splitting the rows over the per-core host
    # devices as the bucket path does measured slower (27k; benchmarks/NOTES.md).
    step_fn = make_stream_step(cfg, tx, chunk)
    data = jax.device_put(stream_matrix(train_ids, B, cols), dev)
    deadline = t_start + cfg.train.max_time if cfg.train.max_time else math.inf
    fit, state = start_fit(schedule, state, deadline, log)
    tokens_per_step = B * chunk
    last: dict = {}
    t_first = time.time()
    steps_done_here = 0

    def val_bits():
        nll, n = score_stream(state["params"], cfg, val_ids)
        return nll / max(n, 1) / LN2

    for epoch in range(opened.epoch, cfg.train.epochs):
        first = opened.batch if epoch == opened.epoch else 0
        if first == 0:
            state["acc"] = jax.device_put(zero_acc(), dev)
            state["carry"] = jax.device_put(zero_carry(cfg, B), dev)
        off = epoch_offset(cfg.train.seed, epoch, chunk, cols)
        t_epoch, t_log, t_progress, pending, toks_since = time.time(), time.time(), time.time(), None, 0
        stopped = False
        for k in range(first, nwin):
            gstep = epoch * nwin + k + 1
            state, m = step_fn(state, data, jnp.int32(off + k * chunk))
            steps_done_here += 1
            toks_since += tokens_per_step
            if pending is not None and primary:
                _flush_step_record(run, pending, schedule)
                pending = None
            now = time.time()
            if gstep % cfg.train.log_every == 0:
                pending = (gstep, m, toks_since, now - t_log)
                toks_since, t_log = 0, now
                if (h := fit.update(gstep, now)) is not None:
                    state = set_horizon(state, h)
            if now - t_progress >= 10.0:
                rate = steps_done_here * tokens_per_step / max(now - t_first, 1e-9)
                left = (total - gstep) * tokens_per_step / max(rate, 1e-9)
                log(f"  step {gstep}/{total}  loss {float(m['loss']) / LN2:.3f} bits/{unit}  "
                    f"{rate / 1e3:.1f}k {unit}/s  ETA {_fmt_time(left)}")
                t_progress = now
            if cfg.train.eval_every and gstep % cfg.train.eval_every == 0 and k + 1 < nwin:
                rec = {"step": gstep, "val_ce_bits_per_token": val_bits(), "elapsed": time.time() - t_start}
                if primary:
                    run.append_metrics(rec)
            if cfg.train.sample_every and gstep % cfg.train.sample_every == 0:
                text = _sample_text(state["params"], cfg, ds.vocab, 1, 1.0, gstep, 200, ts["framed"])[0]
                log(f"  sample at step {gstep}: {text!r}")
            if time.time() > deadline and k + 1 < nwin:
                stopped = save_at_deadline(ckpt, run, state, pending, schedule, primary, log, gstep=gstep,
                                           epoch=epoch, batch=k + 1, best_val=best_val)
                break
        if stopped:
            break
        acc = close_epoch(run, pending, schedule, primary, state, ckpt, cfg, epoch, "")
        seconds = time.time() - t_epoch
        val = stream_metrics(state["params"], cfg, val_ids, unit=unit)
        nsteps = max(float(acc["steps"]), 1.0)
        gstep = (epoch + 1) * nwin
        train_bits = float(acc["nll"] / max(acc["tokens"], 1.0) / LN2)
        rec = {"epoch": epoch + 1, "step": gstep, "train_loss": train_bits * LN2, "train_ce_bits_per_token": train_bits,
               "val_ce_bits_per_token": val["ce_bits_per_token"],
               **{f"val_{k}": v for k, v in val.items() if k.startswith(("bits_per", "nats_per"))},
               "grad_norm_mean": float(acc["gn_sum"] / nsteps),
               "grad_norm_std": float(math.sqrt(max(acc["gn_sq"] / nsteps - (acc["gn_sum"] / nsteps) ** 2, 0.0))),
               "grad_norm_max": float(acc["gn_max"]), "lr": float(schedule(gstep - 1)), "seconds": seconds,
               "tokens_per_s": float(acc["tokens"]) / max(seconds, 1e-9), "elapsed": time.time() - t_start}
        best_val = record_epoch(run, ckpt, cfg, state, rec, epoch, best_val, primary)
        if primary:
            rows = [{"temperature": t, "text": x} for t in (0.0, 1.0)
                    for x in _sample_text(state["params"], cfg, ds.vocab, 1 if t == 0 else 4, t, epoch, 300,
                                             ts["framed"])]
            run.write_samples(epoch + 1, rows)
        per = "char" if unit == "char" else "token"
        log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {train_bits:.4f}  val {rec['val_ce_bits_per_token']:.4f} "
            f"bits/{unit} ({rec[f'val_nats_per_{per}']:.4f} nats; {rec[f'val_nats_per_{per}_window64']:.4f} in "
            f"64-{unit} windows)  grad {rec['grad_norm_mean']:.3f}  {rec['tokens_per_s'] / 1e3:.1f}k {unit}/s  "
            f"{_fmt_time(seconds)}  left ~{_fmt_time((cfg.train.epochs - epoch - 1) * seconds)}")
        last = rec
    ckpt.wait()
    ckpt.close()
    return last
