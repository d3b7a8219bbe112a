"""Tokeniser and context helpers for the ICL ↔ steering tools; the tasks themselves (word lists, `IclTask`, prompts)
are generated data in tasks/icl.py, re-exported here for old callers."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.tokens import pad_id as pad_token
from ..tasks.icl import NL, SEP, TASKS, IclTask, icl_prompt, sample_shots  # noqa: F401  (the data lives in tasks/)


def first_token(tok: Any, text: str) -> int:
    """The answer's first token as the model would write it after `->` (with its leading space); a tokeniser that
    splits the space off (byte-level test tokenisers) gives the first non-space token instead."""
    ids = tok(" " + text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"{text!r} tokenises to nothing")
    if len(ids) > 1 and not tok.decode([ids[0]]).strip():
        return int(ids[1])
    return int(ids[0])


def encode_left(tok: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask (the last token lines up at position -1)."""
    seqs = [tok(t, add_special_tokens=False).input_ids for t in texts]
    n = max(len(s) for s in seqs)
    pad = pad_token(tok)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s):] = 1
    return ids, mask


def context_limit(model: Any) -> int | None:
    cfg = getattr(getattr(model, "config", None), "get_text_config", lambda: getattr(model, "config", None))()
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def check_context(model: Any, tok: Any, task: IclTask, n_shots: int) -> None:
    """Raise when an N-shot prompt of this task would not fit the model's context."""
    lim = context_limit(model)
    if lim is None:
        return
    per = max(len(tok(f"{x}{SEP} {y}{NL}", add_special_tokens=False).input_ids) for x, y in task.pairs)
    need = per * (n_shots + 1)
    if need > lim:
        raise ValueError(f"N={n_shots} shots of {task.name!r} need up to {need} tokens but the model's context is "
                         f"{lim}: use at most {max(0, lim // per - 1)} shots")
