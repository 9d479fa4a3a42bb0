"""`seqgen train | sample | eval` (kept apart so `seqgen data` never imports JAX)."""
from __future__ import annotations


def add_commands(sub) -> None:
    pass
