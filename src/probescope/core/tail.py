"""The top of a llama-like model run alone: the residual stream entering block `start` computed once (the blocks
below are frozen), then blocks start.. and the unembedding at chosen positions only. Used where only the top blocks
train (the curvature organism, the unlearning entity organism); equal to HF's full forward (tested)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .sites import blocks_from, module_path, read_sites, site_hooks


def _text_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers"):
        raise TypeError(f"tail_logits needs a llama-like model (model.model.layers), not {type(model).__name__}")
    return base


def resid_pre(model: nn.Module, ids: torch.Tensor, start: int, batch: int = 16) -> torch.Tensor:
    """The residual stream entering block `start` for right-padded `ids` (frozen lower blocks: computed once)."""
    outs = []
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            outs.append(list(read_sites(model, ids[i:i + batch], None, [f"resid_pre.{start}"]).values())[0])
    return torch.cat(outs)


def tail_logits(model: nn.Module, hidden: torch.Tensor, start: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits from blocks start.. of a llama-like model given resid_pre.start `hidden` [B, T, d]; with `positions`
    (bool [B, T]) only the logits there ([N, vocab]), saving the unembedding of the rest."""
    base = _text_model(model)
    captured: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor) -> None:
        captured["h"] = x

    with site_hooks(model, {f"module_out:{module_path(model, base.norm)}": grab}), blocks_from(model, start):
        base(inputs_embeds=hidden, use_cache=False)
    x = captured["h"]
    if positions is not None:
        x = x[positions]
    return model.lm_head(x)


def pad_batch(seqs: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and target mask [B, T] (True where the token is a target to predict) from
    (token ids, index of the first target) pairs.

    Right padding needs no attention mask in a causal model: real tokens never attend to later pads."""
    T = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    tgt = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (s, start) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        tgt[i, start: len(s)] = True
    return ids, tgt


def tail_targets(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, tgt: torch.Tensor, start: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(float logits [N, vocab], labels [N]) for the target tokens of a `pad_batch`: the logits at t predict t+1, so
    only the positions before a target are unembedded."""
    pos = torch.zeros_like(tgt)
    pos[:, :-1] = tgt[:, 1:]
    return tail_logits(model, hidden, start, pos).float(), ids[:, 1:][tgt[:, 1:]]
