"""Activation patching (exact, batched) and attribution patching (2 forwards + 1 backward) over a grid of sites.

A grid is a site family over layers — `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out` (per layer, or per
layer × position) or `attn_head` (per layer × head, all positions) — and a metric of the logits, by default the logit
difference of a right and a wrong answer token at the last position, averaged over prompt pairs.

Normalised effect of patching cell c: (M(corrupt with clean at c) − M(corrupt)) / (M(clean) − M(corrupt)): 1 means
the cell alone restores the clean behaviour, 0 means it does nothing. Attribution patching replaces the patched
run by its first-order Taylor expansion around the corrupted run (Nanda 2023; Syed et al. 2023):
M(patched) − M(corrupt) ≈ Σ (a_clean − a_corrupt) · ∂M/∂a, all cells from one backward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.capture import left_pad
from ..core.sites import Site, n_heads, n_layers, read_sites, site_hooks

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [B, T, V] → [B] (one value per row)
FAMILIES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_head")


@dataclass
class PatchGrid:
    """One grid of normalised effects: `values[i, j]` for row label i (layer) and column label j (position/head)."""

    family: str
    method: str  # exact | attribution
    values: np.ndarray
    rows: list[str]
    cols: list[str]
    clean_metric: float
    corrupt_metric: float
    seconds: float
    forwards: int
    cells: list[tuple[str, int | None]] = field(default_factory=list)  # (site, position or None) per flat cell

    def to_dict(self) -> dict:
        return {"family": self.family, "method": self.method, "values": self.values.tolist(), "rows": self.rows,
                "cols": self.cols, "clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
                "seconds": self.seconds, "forwards": self.forwards}


def logit_diff(answer_ids: Sequence[int], wrong_ids: Sequence[int], position: int = -1) -> Metric:
    """Metric: logit[answer] − logit[wrong] at `position` (default: the last token), one value per prompt.

    Rows beyond the number of prompts repeat them (patching stacks copies of the prompts): row r uses pair r mod P.
    """
    a = torch.as_tensor(list(answer_ids))
    w = torch.as_tensor(list(wrong_ids))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1 if logits.shape[1] == 1 else position]
        idx = torch.arange(last.shape[0], device=last.device) % len(a)
        return last[torch.arange(last.shape[0]), a.to(last.device)[idx]] - last[torch.arange(last.shape[0]), w.to(last.device)[idx]]

    metric.last_only = position == -1  # type: ignore[attr-defined]  (the forward may compute the last logits only)
    return metric


def check_pair(clean_ids: torch.Tensor, corrupt_ids: torch.Tensor) -> None:
    """Clean and corrupted prompts must align position by position."""
    if clean_ids.dim() != 2 or corrupt_ids.dim() != 2:
        raise ValueError("clean and corrupted prompts must be [P, T] token ids")
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(
            f"clean prompts are {tuple(clean_ids.shape)} tokens and corrupted ones {tuple(corrupt_ids.shape)}: patching "
            "needs aligned positions. Make each corrupted prompt the same length in tokens as its clean one (swap "
            "words of equal token count), or pad them to a common length with align='left'"
        )


def align_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length: the last tokens (where the answer is read) line up."""
    return left_pad(seqs, pad_id)


def grid_cells(model: nn.Module, family: str, n_pos: int, per_position: bool | None = None,
               layers: Sequence[int] | None = None) -> tuple[list[tuple[Site, int | None]], list[str], list[str]]:
    """The flat cells of a grid, with row and column labels."""
    if family not in FAMILIES:
        raise ValueError(f"site family {family!r} cannot be patched: use one of {', '.join(FAMILIES)}")
    nl = n_layers(model)
    rows_l = list(range(nl)) if layers is None else [int(x) % nl for x in layers]
    if family == "attn_head":
        if per_position:
            raise ValueError("attn_head grids are layer × head over all positions: per_position is not supported")
        nh = n_heads(model)
        cells = [(Site("attn_head", L, h), None) for L in rows_l for h in range(nh)]
        return cells, [f"L{L}" for L in rows_l], [f"H{h}" for h in range(nh)]
    if per_position is None:
        per_position = family in ("resid_pre", "resid_mid", "resid_post")
    if per_position:
        cells = [(Site(family, L), p) for L in rows_l for p in range(n_pos)]
        return cells, [f"L{L}" for L in rows_l], [str(p) for p in range(n_pos)]
    return [(Site(family, L), None) for L in rows_l], [f"L{L}" for L in rows_l], ["all"]


def _mean_metric(metric: Metric, logits: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """[rows] metric → [rows // n_prompts]: the mean over the prompt pairs of each stacked copy."""
    m = metric(logits)
    if m.dim() != 1 or m.shape[0] != logits.shape[0]:
        raise ValueError(f"the metric returned shape {tuple(m.shape)}; it must return one scalar per row, shape "
                         f"[{logits.shape[0]}] (e.g. logit[answer] − logit[wrong] at the last position)")
    return m.reshape(-1, n_prompts).mean(1)


def _restorable(clean_m: float, corrupt_m: float) -> float:
    """M(clean) − M(corrupt), the normaliser of every effect; refused when the corruption changes nothing."""
    denom = clean_m - corrupt_m
    if abs(denom) < 1e-6:
        raise ValueError(f"the metric is the same on clean and corrupted prompts ({clean_m:.4g}): there is nothing "
                         "to restore. Pick a corruption that changes the answer")
    return denom


def _forward_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, last_only: bool = False) -> torch.Tensor:
    """Logits of one forward; `last_only`: only the last position's (the unembedding of the others is skipped)."""
    device = next(model.parameters()).device
    am = None if mask is None or bool(mask.all()) else mask.to(device)
    kw = {"logits_to_keep": 1} if last_only else {}
    return model(input_ids=ids.to(device), attention_mask=am, use_cache=False, **kw).logits


@torch.no_grad()
def activation_patching(
    model: nn.Module,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    metric: Metric,
    family: str = "resid_pre",
    *,
    per_position: bool | None = None,
    layers: Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 64,
) -> PatchGrid:
    """Patch the clean activation into the corrupted run at every cell of the grid; normalised effects.

    Cells are batched: each forward stacks copies of the corrupted prompts and patches a different cell in each copy
    (`batch_size` rows per forward), never one forward per cell when a batch fits.
    """
    check_pair(clean_ids, corrupt_ids)
    t0 = time.perf_counter()
    P, T = clean_ids.shape
    cells, rows, cols = grid_cells(model, family, T, per_position, layers)
    sites = sorted({s for s, _ in cells}, key=lambda s: s.order(n_layers(model)))
    clean_acts = read_sites(model, clean_ids, attention_mask, sites)
    clean_m = float(_mean_metric(metric, _forward_logits(model, clean_ids, attention_mask), P)[0])
    corrupt_m = float(_mean_metric(metric, _forward_logits(model, corrupt_ids, attention_mask), P)[0])
    denom = _restorable(clean_m, corrupt_m)
    per = max(1, batch_size // P)  # cells per forward
    last = bool(getattr(metric, "last_only", False))
    effects = np.zeros(len(cells))
    forwards = 2
    mask_rep = None
    for start in range(0, len(cells), per):
        chunk = cells[start: start + per]
        ids = corrupt_ids.repeat(len(chunk), 1)
        if attention_mask is not None:
            mask_rep = attention_mask.repeat(len(chunk), 1)
        by_site: dict[Site, list[tuple[int, int | None]]] = {}
        for j, (s, pos) in enumerate(chunk):
            by_site.setdefault(s, []).append((j, pos))

        def patcher(s: Site):
            src = clean_acts[s]

            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.clone()
                for j, pos in by_site[s]:
                    rows_j = slice(j * P, (j + 1) * P)
                    if pos is None:
                        x[rows_j] = src.to(x.dtype)
                    else:
                        x[rows_j, pos] = src[:, pos].to(x.dtype)
                return x

            return fn

        with site_hooks(model, {s: patcher(s) for s in by_site}):
            logits = _forward_logits(model, ids, mask_rep, last)
        forwards += 1
        m = _mean_metric(metric, logits, P).cpu().numpy()
        effects[start: start + len(chunk)] = (m - corrupt_m) / denom
    return PatchGrid(family, "exact", effects.reshape(len(rows), len(cols)), rows, cols, clean_m, corrupt_m,
                     time.perf_counter() - t0, forwards, [(str(s), p) for s, p in cells])


def attribution_patching(
    model: nn.Module,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    metric: Metric,
    family: str = "resid_pre",
    *,
    per_position: bool | None = None,
    layers: Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> PatchGrid:
    """The same grid from a clean forward, a corrupted forward and one backward (first-order approximation)."""
    check_pair(clean_ids, corrupt_ids)
    t0 = time.perf_counter()
    P, T = clean_ids.shape
    cells, rows, cols = grid_cells(model, family, T, per_position, layers)
    sites = sorted({s for s, _ in cells}, key=lambda s: s.order(n_layers(model)))
    with torch.no_grad():
        clean_acts = read_sites(model, clean_ids, attention_mask, sites)
        clean_m = float(_mean_metric(metric, _forward_logits(model, clean_ids, attention_mask), P)[0])
    got: dict[Site, torch.Tensor] = {}
    # A head's gradient is its layer's attn_out gradient (attn_out = Σ heads + bias): the backward needs only the
    # attn_out tensors, and head values are read outside the graph.
    grad_site = {s: Site("attn_out", s.layer) if s.kind == "attn_head" else s for s in sites}
    grad_sites = sorted(set(grad_site.values()), key=lambda s: s.order(n_layers(model)))

    def leaf(x: torch.Tensor) -> torch.Tensor | None:
        return None if x.requires_grad else x.detach().requires_grad_(True)  # grads even on a frozen model

    def keep(s: Site, detached: bool = False):
        def fn(x: torch.Tensor) -> None:
            got[s] = x

        fn.detached = detached  # type: ignore[attr-defined]
        return fn

    hooks = {"embed": leaf, **{s: keep(s) for s in grad_sites}}
    hooks.update({s: keep(s, detached=True) for s in sites if s not in grad_sites})
    with torch.enable_grad(), site_hooks(model, hooks):
        logits = _forward_logits(model, corrupt_ids, attention_mask)
        m = _mean_metric(metric, logits, P)[0]
        g_list = torch.autograd.grad(m, [got[s] for s in grad_sites], allow_unused=True)
    by_site = dict(zip(grad_sites, g_list))
    grads = [by_site[grad_site[s]] for s in sites]
    corrupt_m = float(m.detach())
    denom = _restorable(clean_m, corrupt_m)
    effects = np.zeros(len(cells))
    for i, (s, pos) in enumerate(cells):
        g = grads[sites.index(s)]
        if g is None:
            continue
        delta = (clean_acts[s] - got[s].detach()) * g  # [P, T, d]
        val = delta[:, pos].sum() if pos is not None else delta.sum()
        effects[i] = float(val) / denom
    return PatchGrid(family, "attribution", effects.reshape(len(rows), len(cols)), rows, cols, clean_m, corrupt_m,
                     time.perf_counter() - t0, 2, [(str(s), p) for s, p in cells])


def agreement(exact: PatchGrid, approx: PatchGrid, k: int = 10) -> dict[str, float]:
    """How well attribution patching ranks the cells exact patching finds: Pearson and Spearman r, top-k overlap
    (by absolute effect), and the largest absolute difference."""
    a, b = exact.values.ravel(), approx.values.ravel()
    if a.shape != b.shape:
        raise ValueError(f"grids differ in shape: {exact.values.shape} vs {approx.values.shape}")
    k = min(k, a.size)

    def ranks(x: np.ndarray) -> np.ndarray:
        r = np.empty_like(x)
        r[np.argsort(x, kind="stable")] = np.arange(x.size)
        return r

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        if x.std() == 0 or y.std() == 0:
            return float("nan")
        return float(np.corrcoef(x, y)[0, 1])

    top_a = set(np.argsort(-np.abs(a))[:k].tolist())
    top_b = set(np.argsort(-np.abs(b))[:k].tolist())
    return {"pearson": corr(a, b), "spearman": corr(ranks(a), ranks(b)), f"top{k}_overlap": len(top_a & top_b) / k,
            "max_abs_diff": float(np.abs(a - b).max())}
