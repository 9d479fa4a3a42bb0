"""A jitted sampler: one `lax.while_loop` draws the next token for all n samples at once, carrying the
LSTM state (no prefix re-run), until every sample has emitted `.end` or `max_len` is reached.

Shapes are static: n is padded up to a power of two (>= 8) and temperature / top-k are arrays, so
new n, temperatures or k within a size class never recompile. Temperature 0 is greedy (argmax)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .data.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab
from .errors import UserError
from .model import apply


def padded_n(n: int) -> int:
    return max(8, 1 << (int(n) - 1).bit_length())


def _draw(key, logits, temperature, top_k, mask_unk: bool = True):
    """logits (n, V) -> tokens (n,). top_k = 0 keeps every token. `.unk` is never drawn unless the
    training data could contain it (a capped vocabulary): a model never trained on it only has noise there."""
    V = logits.shape[-1]
    logits = logits.at[:, PAD_ID].set(-jnp.inf).at[:, START_ID].set(-jnp.inf)  # never targets
    if mask_unk:
        logits = logits.at[:, UNK_ID].set(-jnp.inf)
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    k = jnp.clip(top_k, 1, V)
    kth = jnp.sort(scaled, axis=-1)[:, V - k][:, None]  # (n, 1) k-th largest
    scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
    sampled = jax.random.categorical(key, scaled, axis=-1)
    return jnp.where(temperature <= 0, greedy, sampled).astype(jnp.int32)


@partial(jax.jit, static_argnames=("cfg", "n", "max_len", "early_exit", "mask_unk"))
def _sample(params, key, temperature, top_k, prompt, *, cfg: ModelConfig, n: int, max_len: int,
            early_exit: bool = True, mask_unk: bool = True):
    """prompt (P,) int32 starting with `.start` -> tokens (n, max_len + 1), lengths (n,), ended (n,).

    Up to max_len symbols are drawn, then one more draw that may only end the string."""
    ctx = jnp.broadcast_to(prompt, (n, prompt.shape[0]))
    logits, state = apply(params, ctx, None, cfg=cfg)  # (n, P, V): the prompt in one scan
    steps = max_len + 1
    out = jnp.full((n, steps), PAD_ID, jnp.int32)

    def body(carry):
        t, state, logits, alive, out, lengths = carry
        tok = _draw(jax.random.fold_in(key, t), logits, temperature, top_k, mask_unk)
        tok = jnp.where(alive, tok, PAD_ID)  # an ended sequence never continues
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, t))
        is_sym = alive & (tok != END_ID) & (t < max_len)
        lengths = lengths + is_sym.astype(jnp.int32)
        alive = alive & (tok != END_ID)
        new_logits, state = apply(params, tok[:, None], state, cfg=cfg)
        return t + 1, state, new_logits[:, -1], alive, out, lengths

    def cond(carry):
        t, _, _, alive, _, _ = carry
        return (t < steps) & (jnp.any(alive) if early_exit else True)

    init = (jnp.int32(0), state, logits[:, -1], jnp.ones((n,), bool), out, jnp.zeros((n,), jnp.int32))
    _, _, _, alive, out, lengths = jax.lax.while_loop(cond, body, init)
    ended = jnp.any(out == END_ID, axis=1)
    return out, lengths, ended


@dataclass
class Samples:
    tokens: np.ndarray  # (n, max_len + 1) drawn ids after the prompt, PAD after `.end`
    lengths: np.ndarray  # (n,) symbols drawn (the end marker not counted)
    ended: np.ndarray  # (n,) whether `.end` was drawn within the length cap
    prompt: str = ""

    def texts(self, vocab: Vocab) -> list[str]:
        sep = "" if vocab.char else " "
        out = []
        for row, L in zip(self.tokens, self.lengths):
            body = sep.join(vocab.i2w[int(i)] for i in row[: int(L)])
            out.append(self.prompt + (sep if self.prompt and body and not vocab.char else "") + body)
        return out


def check_sampling_args(n: int, temperature: float, top_k: int, max_len: int) -> None:
    if n < 1:
        raise UserError(f"--n {n} must be >= 1")
    if not 0 <= temperature < float("inf"):
        raise UserError(f"--temperature {temperature} must be a finite number >= 0 (0 = greedy)")
    if top_k < 0:
        raise UserError(f"--top-k {top_k} must be >= 1 (or 0 for no top-k)")
    if max_len < 1:
        raise UserError(f"--max-len {max_len} must be >= 1")


def check_sampling_memory(n: int, max_len: int, cfg: ModelConfig) -> None:
    """Refuse requests whose arrays cannot fit, before XLA aborts the process trying to allocate them."""
    from .memory import check_fits

    m = padded_n(n)
    # tokens out (int32), the per-step state and logits, a few times over for XLA's temporaries
    need = 4 * m * (max_len + 1) * 2 + 4 * m * (cfg.vocab_size + 4 * cfg.hidden * cfg.layers) * 4
    check_fits(need, f"sampling {n:,} x {max_len:,} tokens", "lower --n or --max-len")


def stream_context(vocab: Vocab, prompt: str) -> np.ndarray:
    """What a model trained on a raw stream (`text:PATH`, no `.start`) is primed with: the prompt, else
    a newline (after which char-level text starts a fresh line: a speaker's name in a play), else
    `.end`, which separates the documents of a multi-document corpus."""
    if prompt:
        return vocab.encode(prompt).astype(np.int32)
    nl = vocab.w2i.get("\n")
    return np.array([nl if nl is not None else END_ID], np.int32)


def sample(params, cfg: ModelConfig, vocab: Vocab, *, n: int, key, temperature: float = 1.0,
           top_k: int = 0, prompt: str = "", max_len: int = 200, early_exit: bool = True,
           unk_seen: bool = False, stream: bool = False) -> Samples:
    """n samples from `.start` (+ prompt), or for a stream-trained model from `stream_context`. `key` is
    a jax PRNG key; the same key gives the same samples. `unk_seen`: the training data could contain
    `.unk` (a capped vocabulary), so it may be drawn."""
    check_sampling_args(n, temperature, top_k, max_len)
    check_sampling_memory(n, max_len, cfg)
    if stream:
        p = stream_context(vocab, prompt)
    else:
        p = np.concatenate([[START_ID], vocab.encode(prompt)]).astype(np.int32)
    m = padded_n(n)
    tok, lengths, ended = _sample(params, key, jnp.float32(temperature), jnp.int32(top_k), jnp.asarray(p),
                                  cfg=cfg, n=m, max_len=int(max_len), early_exit=early_exit, mask_unk=not unk_seen)
    tok, lengths, ended = jax.device_get((tok, lengths, ended))
    return Samples(np.asarray(tok)[:n], np.asarray(lengths)[:n], np.asarray(ended)[:n], prompt)
