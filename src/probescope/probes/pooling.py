"""Pooling over tokens (mean, last, max) and its every-prefix form in one O(T) pass, and the
`PooledProbe` base shared by the kinds that pool first (linear, MLP, sparse)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Probe

POOLS = ("mean", "last", "max")


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: use one of {', '.join(POOLS)}")
    return pool


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """`[N, T, D]` -> `[N, D]` over the real tokens of each row."""
    if x.shape[1] == 1:  # already one vector per row (pooled features passed as [N, 1, D])
        return x[:, 0]
    m = mask.unsqueeze(-1)
    if how == "mean":
        return (x * m).sum(1) / m.sum(1).clamp_min(1)
    if how == "max":
        return x.masked_fill(~m, float("-inf")).amax(1)
    if how == "last":
        pos = torch.arange(x.shape[1], device=x.device).expand_as(mask)
        idx = torch.where(mask, pos, -1).amax(1)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    raise ValueError(f"pool={how!r}: use one of {', '.join(POOLS)}")


def prefix_pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """`[N, T, D]`: entry t is `pool_tokens` of the real tokens up to t (running sums / running max);
    zeros before a row's first real token."""
    m = mask.unsqueeze(-1)
    if how == "mean":
        return torch.cumsum(x * m, 1) / torch.cumsum(m.to(x.dtype), 1).clamp_min(1)
    if how == "max":
        out = torch.cummax(x.masked_fill(~m, float("-inf")), 1).values
        return torch.where(torch.isneginf(out), torch.zeros_like(out), out)
    if how == "last":
        pos = torch.arange(x.shape[1], device=x.device).expand_as(mask)
        idx = torch.cummax(torch.where(mask, pos, -1), 1).values
        out = torch.gather(x, 1, idx.clamp_min(0).unsqueeze(-1).expand_as(x))
        return out * (idx >= 0).unsqueeze(-1)
    raise ValueError(f"pool={how!r}: use one of {', '.join(POOLS)}")


class PooledProbe(Probe):
    """Pool the tokens, standardise each feature (statistics of the training set), then a head."""

    def __init__(self, pool: str = "mean") -> None:
        super().__init__()
        self.pool = check_pool(pool)
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    # kinds override these two to change the features (the sparse probe encodes, then selects)
    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool_tokens(x, mask, self.pool)

    def prefix_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return prefix_pool(x, mask, self.pool)

    def make_head(self, d_in: int, n_out: int) -> nn.Module:
        raise NotImplementedError

    def setup(self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        f = self.features(x, mask)
        mu = f.mean(0)
        sd = (f - mu).pow(2).mean(0).sqrt()  # (torch.std_mean over dim 0 is ~6x slower on CPU at these sizes)
        self._stats = (mu, torch.where(sd > 1e-6, sd, torch.ones_like(sd)))

    def build(self, n_out: int) -> None:
        mu, sd = self._stats if self._stats is not None else (torch.zeros(self._d_in_load), torch.ones(self._d_in_load))
        self.register_buffer("mu", mu.clone())
        self.register_buffer("sd", sd.clone())
        self.head = self.make_head(mu.shape[0], n_out)

    def build_for_load(self, state: dict[str, torch.Tensor]) -> None:
        self._d_in_load = state["mu"].shape[0]
        self.build(self.n_out)

    def prepare(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ((self.features(x, mask) - self.mu) / self.sd,)

    def logits(self, f: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(f)

    def linear_head(self) -> nn.Linear | None:
        """The head when the logits are one linear map of the prepared features (the trainer's fast L-BFGS path)."""
        return self.head if type(self.head) is nn.Linear else None

    def prefix_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head((self.prefix_features(x, mask) - self.mu) / self.sd)
