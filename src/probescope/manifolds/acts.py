"""Activations at the concept token: one forward per distinct text, every requested layer, through core.capture."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..core.capture import capture
from ..core.progress import progress
from ..core.tokens import pad_id
from .concepts import Example


def token_index(offsets: Sequence[tuple[int, int]], position: int, text: str) -> int:
    """Index of the token whose character span holds `position` (a ValueError when none does)."""
    if not 0 <= position < len(text):
        raise ValueError(f"position {position} is outside the text (length {len(text)}): {text[:60]!r}; give the "
                         "character offset of the concept, 0 ≤ position < len(text)")
    for i, (a, b) in enumerate(offsets):
        if a <= position < b:
            return i
    raise ValueError(f"no token holds character {position} ({text[position]!r}) of {text[:60]!r}: point at a "
                     "character of a word, not at text the tokenizer drops")


def concept_tokens(tokenizer: Any, examples: Sequence[Example]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids of each distinct text and, per example, (text index, token index) of its concept token."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("reading the concept token needs a fast tokenizer (character offsets); this one is not")
    texts: dict[str, int] = {}
    for e in examples:
        if not 0 <= e.position < len(e.text):
            raise ValueError(f"position {e.position} is outside the text (length {len(e.text)}): {e.text[:60]!r}; "
                             "give the character offset of the concept, 0 ≤ position < len(text)")
        texts.setdefault(e.text, len(texts))
    order = list(texts)
    enc = tokenizer(order, return_offsets_mapping=True)
    where = []
    for e in examples:
        t = texts[e.text]
        where.append((t, token_index(enc["offset_mapping"][t], e.position, e.text)))
    return [list(x) for x in enc["input_ids"]], where


@torch.no_grad()
def concept_acts(model: Any, tokenizer: Any, examples: Sequence[Example], layers: Sequence[int],
                 batch_size: int = 32, desc: str = "reading the concept token") -> dict[int, np.ndarray]:
    """{layer: [N, d] float32}: the residual stream after block L at each example's concept token."""
    ids, where = concept_tokens(tokenizer, examples)
    n_tok = {}
    for t, p in where:
        n_tok.setdefault(t, set()).add(p)
    out: dict[int, np.ndarray] = {}
    rows: dict[tuple[int, int], int] = {}
    chunks: dict[int, list[np.ndarray]] = {int(L): [] for L in layers}
    done = 0
    pid = pad_id(tokenizer)
    with progress(len(ids), desc, unit="text") as bar:
        for s in range(0, len(ids), batch_size):
            batch = list(range(s, min(len(ids), s + batch_size)))
            T = max(len(ids[t]) for t in batch)
            x = torch.full((len(batch), T), pid, dtype=torch.long)
            m = torch.zeros((len(batch), T), dtype=torch.long)
            sel = torch.zeros((len(batch), T), dtype=torch.bool)
            for b, t in enumerate(batch):
                x[b, :len(ids[t])] = torch.tensor(ids[t])
                m[b, :len(ids[t])] = 1
                for p in sorted(n_tok.get(t, ())):
                    sel[b, p] = True
            cap = capture(model, {"input_ids": x, "attention_mask": m}, list(layers), positions=sel,
                          out_dtype=torch.float32)
            for k, (b, p) in enumerate(cap.index.tolist()):
                rows[(batch[b], p)] = done + k
            done += len(cap.index)
            for L in chunks:
                chunks[L].append(cap.acts[L].numpy())
            bar.advance(len(batch))
    idx = np.array([rows[w] for w in where])
    for L, parts in chunks.items():
        out[L] = np.concatenate(parts)[idx]
    return out
