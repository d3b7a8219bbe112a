"""Read contrastive-pair activations and turn them into one direction per layer (mean difference, PCA, probe).

Readout (`read`): "last" (default, as in the steering-vectors library) takes the residual stream at the last
real token of each text; "span" averages over the tokens where the positive and negative texts differ (from
the first differing token id to the end of each text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..core.capture import capture, tokenize
from ..core.hooks import check_layers
from .jobs import METHODS, READS  # the one list of each, shared with the CLI's options

Method = Literal["mean_diff", "pca", "probe"]
Read = Literal["last", "span"]


@dataclass
class TrainConfig:
    """How a steering vector is made from contrastive pairs."""

    method: str = "mean_diff"  # mean_diff | pca | probe
    read: str = "last"  # last | span
    batch_size: int = 8  # pairs per forward (each forward holds 2 * batch_size texts)
    max_length: int | None = 256
    normalize: bool = False  # scale each layer's vector to unit norm

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: use one of {', '.join(METHODS)}")
        if self.read not in READS:
            raise ValueError(f"read={self.read!r}: use 'last' (last token) or 'span' (mean over the differing span)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def check_pairs(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    """Pairs as (positive, negative) strings; accepts tuples, dicts with positive/negative, or objects with them."""
    if pairs is None or len(pairs) == 0:
        raise ValueError("no contrastive pairs: pass at least one (positive, negative) pair of texts, "
                         "e.g. probescope.steering.pairs.sentiment_pairs(tokenizer)")
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, dict):
            p = (p.get("positive"), p.get("negative"))
        elif hasattr(p, "positive") and hasattr(p, "negative"):
            p = (p.positive, p.negative)
        elif hasattr(p, "positive_str"):
            p = (p.positive_str, p.negative_str)
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) and s for s in p)):
            raise ValueError(f"pair {i} is {p!r}: each pair must be two non-empty texts (positive, negative)")
        out.append((p[0], p[1]))
    return out


def _span_mean(acts: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over the differing span of each (pos row i, neg row n+i) pair; acts [2n, T, D]."""
    rows = []
    for r in range(2 * n):
        other = r + n if r < n else r - n
        a = ids[r][mask[r].bool()]
        b = ids[other][mask[other].bool()]
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        if k == len(a):  # this text is a prefix of the other (or equal): use its last token
            k = len(a) - 1
        real = mask[r].bool().nonzero().flatten()
        rows.append(acts[r, real[k:]].mean(0))
    return torch.stack(rows)


@torch.no_grad()
def pair_activations(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    layers: Sequence[int],
    read: str = "last",
    batch_size: int = 8,
    max_length: int | None = 256,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Positive and negative activations `[N, D]` per layer, read at the last token or over the differing span."""
    layer_ids = check_layers(model, list(layers))
    pos: dict[int, list[torch.Tensor]] = {lay: [] for lay in layer_ids}
    neg: dict[int, list[torch.Tensor]] = {lay: [] for lay in layer_ids}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        n = len(chunk)
        texts = [p for p, _ in chunk] + [q for _, q in chunk]
        enc = tokenize(tokenizer, texts, max_length=max_length)
        cap = capture(model, enc, layer_ids, positions="last" if read == "last" else "all")
        for lay in layer_ids:
            x = cap.acts[lay].float()
            if read == "span":
                x = _span_mean(x, cap.attention_mask, cap.input_ids, n)
            pos[lay].append(x[:n])
            neg[lay].append(x[n:])
    return {k: torch.cat(v) for k, v in pos.items()}, {k: torch.cat(v) for k, v in neg.items()}


def _scaled_like_mean(unit: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Orient `unit` with the mean difference and give it the length of the mean difference's projection."""
    proj = deltas.mean(0) @ unit
    if float(proj) < 0:
        unit, proj = -unit, -proj
    return unit * proj


def aggregate(pos: torch.Tensor, neg: torch.Tensor, method: str) -> torch.Tensor:
    """One direction `[D]` from positive and negative activations `[N, D]`.

    mean_diff: mean(pos − neg). pca: first uncentred principal component of the differences (as in
    steering-vectors' pca_aggregator). probe: logistic-regression weight separating pos from neg (centred per
    pair). pca and probe directions are oriented and scaled like the mean difference projected onto them, so
    multipliers mean about the same thing for every method.
    """
    deltas = (pos - neg).double()
    if method == "mean_diff":
        return deltas.mean(0).float()
    if method == "pca":
        sym = torch.cat([deltas, -deltas])
        _, _, vh = torch.linalg.svd(sym, full_matrices=False)
        return _scaled_like_mean(vh[0], deltas).float()
    if method == "probe":
        if pos.shape[0] < 2:
            raise ValueError("method='probe' needs at least 2 pairs; use mean_diff for a single pair")
        from sklearn.linear_model import LogisticRegression

        centre = (pos + neg).double() / 2
        x = torch.cat([pos.double() - centre, neg.double() - centre]).numpy()
        y = [1] * pos.shape[0] + [0] * neg.shape[0]
        clf = LogisticRegression(fit_intercept=False, C=1.0, max_iter=2000).fit(x, y)
        w = torch.as_tensor(clf.coef_[0], dtype=torch.float64)
        return _scaled_like_mean(w / w.norm().clamp_min(1e-30), deltas).float()
    raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
