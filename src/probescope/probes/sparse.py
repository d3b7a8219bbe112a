"""Sparse probe on SAE latents: pick the top-k latents (class-mean difference, or an L1 path) and fit a
logistic probe on them; it reports the latents it chose, with their labels when the encoder has them.

The encoder is duck-typed: any object with `encode(x [..., D]) -> [..., n_latents]` and optionally
`explain(latent: int) -> str`. It is not saved with the probe: pass it again to `load_probe(path, encoder=...)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .base import register
from .pooling import PooledProbe, pool_tokens, prefix_pool

SELECTS = ("diff", "l1")


def mean_difference_scores(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per latent: |mean over class c - mean over the rest| / the latent's std over all examples (so its scale
    does not decide: SAE latents range over orders of magnitude), maximised over classes (one class for binary).
    A latent constant on the data scores 0."""
    classes = torch.unique(y).tolist()
    cols = classes[1:] if len(classes) == 2 else classes
    sd = f.std(0, unbiased=False)
    scale = torch.where(sd > 1e-8, 1 / sd.clamp_min(1e-12), torch.zeros_like(sd))
    return torch.stack([(f[y == c].mean(0) - f[y != c].mean(0)).abs() * scale for c in cols]).amax(0)


def l1_path_select(f: torch.Tensor, y: torch.Tensor, k: int, seed: int = 0) -> list[int]:
    """Latents entering an L1-logistic regularisation path (C increasing), in order of entry, until k."""
    from sklearn.linear_model import LogisticRegression

    X = f.double().numpy()
    sd = X.std(0)
    X = (X - X.mean(0)) / np.where(sd > 1e-9, sd, 1.0)
    chosen: list[int] = []
    for C in np.logspace(-3, 1, 25):
        m = LogisticRegression(C=float(C), l1_ratio=1.0, solver="liblinear", max_iter=500, random_state=seed)
        m.fit(X, y.numpy())
        w = np.abs(m.coef_).max(0)
        new = [int(i) for i in np.argsort(-w) if w[i] > 0 and int(i) not in chosen]
        if len(chosen) + len(new) > k:
            chosen += new[: k - len(chosen)]
            break
        chosen += new
        if len(chosen) >= k:
            break
    return chosen


@register("sparse")
class SparseProbe(PooledProbe):
    """Logistic probe on `k` SAE latents chosen by `select` ("diff": class-mean difference; "l1": L1 path)."""

    default_optimizer = "lbfgs"

    def __init__(self, encoder: Any = None, k: int = 32, select: str = "diff", pool: str = "mean", labels: list | None = None) -> None:
        super().__init__(pool)
        if select not in SELECTS:
            raise ValueError(f"select={select!r}: use one of {', '.join(SELECTS)}")
        if k < 1:
            raise ValueError(f"k={k}: choose at least one latent")
        self.k, self.select, self.labels = int(k), select, labels
        object.__setattr__(self, "encoder", encoder)  # not a submodule: never saved with the probe
        self._ids: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "select": self.select, "pool": self.pool, "labels": self.labels}

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latents `[..., M]` of `x` `[..., d]`: any `encode(x)` returning a tensor, or a probescope SAE
        (whose `encode` takes `[N, d]` and returns sparse `Latents`)."""
        if self.encoder is None or not hasattr(self.encoder, "encode"):
            raise ValueError("a sparse probe needs its SAE: pass encoder=... (an object with encode(x))")
        with torch.no_grad():
            z = self.encoder.encode(x.reshape(-1, x.shape[-1]))
            z = z.dense() if hasattr(z, "dense") else z
            return z.float().reshape(*x.shape[:-1], z.shape[-1])

    def _latents(self, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        out = []
        for i in range(0, len(x), 128):
            z = self._encode(x[i : i + 128])
            if ids is not None:
                if int(ids.max()) >= z.shape[-1]:
                    raise ValueError(f"the encoder has {z.shape[-1]} latents but the probe uses latent {int(ids.max())}: wrong SAE")
                z = z[..., ids]
            out.append(z)
        return torch.cat(out)

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = self._ids if self._ids is not None else self.latent_ids
        return pool_tokens(self._latents(x, ids), mask, self.pool)

    def prefix_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return prefix_pool(self._latents(x, self.latent_ids), mask, self.pool)

    def setup(self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        full = pool_tokens(self._latents(x, None), mask, self.pool)
        k = min(self.k, full.shape[-1])
        if self.select == "diff":
            scores = mean_difference_scores(full, y)
            ids = torch.argsort(scores, descending=True)[:k]
        else:
            ids = torch.tensor(l1_path_select(full, y, k), dtype=torch.long)
            if len(ids) < k:  # the path ran out: fill up by mean difference
                scores = mean_difference_scores(full, y)
                rest = [int(i) for i in torch.argsort(scores, descending=True) if int(i) not in set(ids.tolist())]
                ids = torch.cat([ids, torch.tensor(rest[: k - len(ids)], dtype=torch.long)])
        self._ids = ids.long()
        f = full[:, self._ids]
        sd = f.std(0, unbiased=False)
        self._stats = (f.mean(0), torch.where(sd > 1e-6, sd, torch.ones_like(sd)))
        explain = getattr(self.encoder, "explain", None)
        self.labels = [str(explain(int(i))) if callable(explain) else f"latent {int(i)}" for i in self._ids]

    def build(self, n_out: int) -> None:
        ids = self._ids if self._ids is not None else torch.zeros(self._d_in_load, dtype=torch.long)
        self.register_buffer("latent_ids", ids.clone())
        super().build(n_out)

    def make_head(self, d_in: int, n_out: int) -> nn.Module:
        head = nn.Linear(d_in, n_out)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    def chosen(self) -> list[dict[str, Any]]:
        """The latents the probe uses: id, label, and the weight the probe gives each (standardised scale)."""
        w = self.head.weight.detach().abs().amax(0)
        labels = self.labels or [f"latent {int(i)}" for i in self.latent_ids]
        return [
            {"latent": int(i), "label": labels[j], "weight": float(w[j])} for j, i in enumerate(self.latent_ids.tolist())
        ]
