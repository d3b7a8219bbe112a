"""Linear probe: logistic (binary) or softmax (multi-class) regression on pooled activations, fit by L-BFGS."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import register
from .pooling import PooledProbe


@register("linear")
class LinearProbe(PooledProbe):
    """Logistic / softmax regression on mean-, last- or max-pooled activations (standardised features).

    Trained full-batch by L-BFGS with a strong-Wolfe line search; `weight_decay` is the L2 strength
    lambda in `mean loss + lambda/2 * ||W||^2` (scikit-learn's `C` is `1 / (lambda * n_train)`).
    """

    default_optimizer = "lbfgs"

    def __init__(self, pool: str = "mean") -> None:
        super().__init__(pool)

    def params(self) -> dict[str, Any]:
        return {"pool": self.pool}

    def make_head(self, d_in: int, n_out: int) -> nn.Module:
        head = nn.Linear(d_in, n_out)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    @property
    def direction(self):
        """The probe's weight vector(s) in activation space `[n_out, D]` (standardisation folded in)."""
        return (self.head.weight / self.sd).detach()
