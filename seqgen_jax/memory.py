"""Refuse work that cannot fit in memory with one clear line, before XLA aborts the process."""
from __future__ import annotations

import os

from .errors import UserError


def available_bytes() -> int:
    """The accelerator's memory limit where JAX reports one, else the machine's physical memory."""
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # CPU devices report no statistics
        pass
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_fits(need: int, what: str, fix: str) -> None:
    have = available_bytes()
    if need > 0.8 * have:
        raise UserError(f"{what} needs about {need / 2**30:,.1f} GiB, more than this machine's "
                        f"{have / 2**30:,.1f} GiB; {fix}")


def check_model_memory(cfg) -> None:
    """cfg: a RunConfig; checked before any parameter exists."""
    m = cfg.model
    n_params = m.vocab_size * m.embed + 4 * m.hidden * (m.embed + m.hidden + 1) + \
        (m.layers - 1) * 4 * m.hidden * (2 * m.hidden + 1) + m.hidden * m.vocab_size
    # params, gradients and Adam's two moments, plus the activations of one full batch (gates, h, c)
    need = 4 * 4 * n_params + 4 * cfg.train.max_tokens * (6 * m.hidden * m.layers + 2 * m.vocab_size)
    check_fits(need, f"a ({m.embed}, {m.hidden}) x {m.layers} model with {cfg.train.max_tokens:,}-token batches",
               "lower --hidden, --embed, --layers or --max-tokens")
