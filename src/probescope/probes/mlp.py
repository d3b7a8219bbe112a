"""MLP probe: a small nonlinear head (one hidden layer) on pooled activations, trained with AdamW."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import register
from .pooling import PooledProbe


@register("mlp")
class MLPProbe(PooledProbe):
    """Pooled activations -> Linear(D, hidden) -> GELU -> Dropout -> Linear(hidden, n_out)."""

    default_optimizer = "adamw"

    def __init__(self, pool: str = "mean", hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__(pool)
        if hidden < 1:
            raise ValueError(f"hidden={hidden}: use a positive width")
        self.hidden, self.dropout = int(hidden), float(dropout)

    def params(self) -> dict[str, Any]:
        return {"pool": self.pool, "hidden": self.hidden, "dropout": self.dropout}

    def make_head(self, d_in: int, n_out: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d_in, self.hidden), nn.GELU(), nn.Dropout(self.dropout), nn.Linear(self.hidden, n_out))
