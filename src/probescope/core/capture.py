"""Batches in, activations out at any named site: exactly HF's numbers, only the blocks asked for run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from .sites import Site, find_blocks, read_sites, resolve_sites

Positions = Literal["all", "last"] | torch.Tensor


@dataclass
class Capture:
    """Activations per site, with the token ids and attention mask they came from.

    Keys are what was asked for: an int L (the residual stream after block L) or a site name such as
    "attn_head.3.1" (canonical spelling). `acts[layer]` is `[B, T, D]` for positions="all", `[B, D]` for "last" (the last real token, with
    left or right padding), and `[N, D]` for a boolean mask (rows in the order of `index`, `[N, 2]`
    of (batch, position)).
    """

    acts: dict[Any, torch.Tensor]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: str = "all"
    index: torch.Tensor | None = None
    layers: list[Any] = field(default_factory=list)
    sites: dict[Any, str] = field(default_factory=dict)  # key → canonical site name

    def __getitem__(self, key: Any) -> torch.Tensor:
        if key in self.acts:
            return self.acts[key]
        for k, name in self.sites.items():
            if name == str(key):
                return self.acts[k]
        raise KeyError(f"{key!r} was not captured: captured {list(self.sites.values())}")


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int | None = None, padding_side: str | None = None):
    """Tokenize with padding (and truncation to `max_length`); returns a BatchEncoding of tensors."""
    if tokenizer is None:
        raise ValueError("texts need a tokenizer: pass tokenizer=... (load_model returns one) or token ids")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kw: dict[str, Any] = dict(return_tensors="pt", padding=True)
    if max_length:
        kw.update(truncation=True, max_length=max_length)
    old = tokenizer.padding_side
    if padding_side:
        tokenizer.padding_side = padding_side
    try:
        return tokenizer(list(texts), **kw)
    finally:
        tokenizer.padding_side = old


def as_batch(inputs: Any, tokenizer: Any = None, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) from texts, a BatchEncoding/dict, or a tensor of token ids."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        mask = torch.ones_like(ids)
    elif isinstance(inputs, Mapping) or hasattr(inputs, "keys"):
        ids = torch.as_tensor(inputs["input_ids"])
        mask = torch.as_tensor(inputs["attention_mask"]) if "attention_mask" in inputs else torch.ones_like(ids)
    elif isinstance(inputs, Sequence):
        if len(inputs) == 0:
            raise ValueError("empty input: pass at least one text or one row of token ids")
        if not all(isinstance(t, str) for t in inputs):
            raise TypeError("inputs must be texts, a dict with input_ids, or a tensor of token ids")
        enc = tokenize(tokenizer, inputs, max_length=max_length)
        ids, mask = enc["input_ids"], enc["attention_mask"]
    else:
        raise TypeError(f"cannot read inputs of type {type(inputs).__name__}")
    if ids.numel() == 0 or ids.shape[0] == 0:
        raise ValueError("empty input: pass at least one text or one row of token ids")
    if (mask.sum(-1) == 0).any():
        bad = (mask.sum(-1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {bad} have no tokens (empty text?): drop them or give them text")
    return ids.long(), mask.long()


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token lists left-padded to one length: their last tokens line up."""
    n = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, n - len(x):] = torch.tensor(list(x))
        mask[i, n - len(x):] = 1
    return ids, mask


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (left or right padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, -1).max(dim=1).values


def _select(x: torch.Tensor, positions: Positions, mask: torch.Tensor) -> torch.Tensor:
    if isinstance(positions, torch.Tensor):
        return x[positions.to(x.device)]
    if positions == "last":
        return x[torch.arange(x.shape[0], device=x.device), last_index(mask).to(x.device)]
    return x


@torch.no_grad()
def capture(
    model: nn.Module,
    inputs: Any,
    layers: "int | str | Site | Sequence[int | str | Site]",
    *,
    tokenizer: Any = None,
    positions: Positions = "all",
    batch_size: int | None = None,
    max_length: int | None = None,
    final_norm: bool = False,
    out_dtype: torch.dtype | None = None,
    out_device: str | torch.device = "cpu",
) -> Capture:
    """Activations at each site in `layers` for `inputs`, stopping the forward after the deepest.

    `layers`: ints (the residual stream after block L, equal to HF's `hidden_states[L + 1]`) and/or site names
    ("resid_mid.3", "attn_head.2.1", "mlp_out.5", "attn_pattern.1", "logits"; see `probescope.core.sites`).
    `inputs`: texts (with `tokenizer`), a BatchEncoding/dict with `input_ids` (and `attention_mask`), or a tensor
    of token ids. `positions`: "all", "last", or a `[B, T]` bool mask (attn_pattern: "all" only). For the last
    block HF applies the final norm and the block does not: `final_norm=True` applies it there so the two are equal.
    Raises on NaN/inf activations, naming the site.
    """
    keys = [layers] if isinstance(layers, (int, str, Site)) else list(layers)
    if not keys:
        raise ValueError("no layers requested: pass at least one layer index or site, e.g. layers=[6]")
    sites = resolve_sites(model, keys)
    ids, mask = as_batch(inputs, tokenizer, max_length)
    if isinstance(positions, torch.Tensor):
        if positions.shape != ids.shape:
            raise ValueError(f"position mask has shape {tuple(positions.shape)}, inputs have {tuple(ids.shape)}")
        positions = positions.bool()
    elif positions not in ("all", "last"):
        raise ValueError(f"positions={positions!r}: use 'all', 'last' or a [B, T] boolean mask")
    if any(s.kind == "attn_pattern" for s in sites) and not (isinstance(positions, str) and positions == "all"):
        raise ValueError("attn_pattern sites are [B, heads, T, T]: capture them with positions='all'")
    blocks = find_blocks(model)
    last_block = blocks.n_layers - 1
    bs = batch_size or ids.shape[0]
    # one entry per distinct site; several keys may name the same one
    uniq = list(dict.fromkeys(sites))
    key_of = {k: s for k, s in zip(keys, sites)}
    chunks: dict[Site, list[torch.Tensor]] = {s: [] for s in uniq}
    for start in range(0, ids.shape[0], bs):
        b_ids, b_mask = ids[start : start + bs], mask[start : start + bs]
        got = read_sites(model, b_ids, b_mask, uniq)
        sel = positions[start : start + bs] if isinstance(positions, torch.Tensor) else positions
        for s in uniq:
            x = got[s]
            if final_norm and s == Site("resid_post", last_block) and blocks.final_norm is not None:
                x = blocks.final_norm(x)
            if not torch.isfinite(x).all():
                what = f"layer {s.layer}" if s.kind == "resid_post" else f"site {s}"
                raise FloatingPointError(
                    f"{what} produced NaN/inf activations (rows {start}..{start + len(b_ids) - 1}): "
                    "check the model's dtype (use float32) and its weights"
                )
            if s.kind != "attn_pattern":
                x = _select(x, sel, b_mask)
            chunks[s].append(x.to(device=out_device, dtype=out_dtype or x.dtype))
    acts: dict[Any, torch.Tensor] = {}
    names: dict[Any, str] = {}
    for k, s in key_of.items():
        key = s.layer if isinstance(k, int) and not isinstance(k, bool) else str(s)
        acts[key] = torch.cat(chunks[s])
        names[key] = str(s)
    index = None
    pos_name = positions if isinstance(positions, str) else "mask"
    if isinstance(positions, torch.Tensor):
        index = positions.nonzero()
    elif positions == "last":
        index = last_index(mask)
    return Capture(acts, ids, mask, pos_name, index, list(acts), names)
