"""Token ids every wing needs from a tokenizer."""

from __future__ import annotations

from typing import Any


def pad_id(tokenizer: Any, fallback: int | None = 0) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos token, else `fallback` (None: raise, naming the
    fix). Padded positions are masked everywhere, so any id serves; a generate call needs a real one."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        if fallback is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        return int(fallback)
    return int(pid)
