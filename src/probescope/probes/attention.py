"""Attention probe (Shabalin & Belrose 2025): per head a learned query (no bias, zero-initialised, so
training starts as mean pooling), a linear position bias, a masked softmax over tokens, and a value
projection to the class logits; the heads' outputs are summed.

Every-prefix predictions use running (online) softmax sums, O(T): `predict_prefixes` in one vectorised
pass (log-cumsum-exp, i.e. cumulative max-shifted exp sums), and `init_state` / `step` for token-by-token
streaming with O(1) work per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import register, Probe


@dataclass
class StreamState:
    """Running online-softmax sums per row and head: max score `m`, sum of exp `z`, exp-weighted values `num`."""

    m: torch.Tensor  # [B, H]
    z: torch.Tensor  # [B, H]
    num: torch.Tensor  # [B, H, n_v]
    pos: torch.Tensor  # [B] real tokens seen so far


@register("attention")
class AttentionProbe(Probe):
    """`n_heads` attention heads over tokens; score_h(t) = q_h . x_t + w_h * position(t).

    Options: `layer_norm` (LayerNorm before the probe instead of fixed standardisation), `mlp_hidden`
    (an MLP after pooling: values project to that width and a GELU MLP maps to the logits),
    `attn_dropout` (on the attention weights while training), `record_attention` (keep the last
    attention weights `[N, T, H]` in `self.last_attention` for display).
    """

    default_optimizer = "adamw"
    default_lr = 5e-3

    def __init__(
        self,
        n_heads: int = 8,
        position_bias: bool = True,
        layer_norm: bool = False,
        mlp_hidden: int = 0,
        attn_dropout: float = 0.0,
        record_attention: bool = False,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads={n_heads}: use at least one head")
        self.n_heads, self.position_bias, self.layer_norm = int(n_heads), bool(position_bias), bool(layer_norm)
        self.mlp_hidden, self.attn_dropout, self.record_attention = int(mlp_hidden), float(attn_dropout), bool(record_attention)
        self.last_attention: torch.Tensor | None = None
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "n_heads": self.n_heads, "position_bias": self.position_bias, "layer_norm": self.layer_norm,
            "mlp_hidden": self.mlp_hidden, "attn_dropout": self.attn_dropout, "record_attention": self.record_attention,
        }

    # ----- parameters ------------------------------------------------------------------------------------
    @property
    def n_v(self) -> int:
        return self.mlp_hidden or self.n_out

    def setup(self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        # per-feature mean / std over all real training tokens, in chunks (no [N*T, D] copy)
        n, s, s2 = 0, torch.zeros(x.shape[-1], dtype=torch.float64), torch.zeros(x.shape[-1], dtype=torch.float64)
        for i in range(0, len(x), 256):
            t = x[i : i + 256][mask[i : i + 256]].double()
            n, s, s2 = n + len(t), s + t.sum(0), s2 + (t * t).sum(0)
        mu = s / n
        sd = (s2 / n - mu * mu).clamp_min(0).sqrt()
        self._stats = (mu.float(), torch.where(sd > 1e-6, sd, torch.ones_like(sd)).float())

    def build(self, n_out: int) -> None:
        d = self.d_model
        H = self.n_heads
        mu, sd = self._stats if self._stats is not None else (torch.zeros(d), torch.ones(d))
        self.register_buffer("mu", mu.clone())
        self.register_buffer("sd", sd.clone())
        self.norm = nn.LayerNorm(d) if self.layer_norm else nn.Identity()
        self.query = nn.Linear(d, H, bias=False)
        nn.init.zeros_(self.query.weight)  # uniform attention at the start: mean pooling
        self.pos_w = nn.Parameter(torch.zeros(H), requires_grad=self.position_bias)
        self.value = nn.Linear(d, H * self.n_v)
        nn.init.normal_(self.value.weight, std=1.0 / (d**0.5 * H))
        nn.init.zeros_(self.value.bias)
        self.post = (
            nn.Sequential(nn.GELU(), nn.Linear(self.mlp_hidden, n_out)) if self.mlp_hidden else nn.Identity()
        )

    # ----- forward pieces --------------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query scores `[..., H]`, values `[..., H, n_v]`) in one matmul, standardisation folded in."""
        H = self.n_heads
        W = torch.cat([self.query.weight, self.value.weight])
        b = torch.cat([torch.zeros(H, dtype=W.dtype, device=W.device), self.value.bias])
        if self.layer_norm:
            out = F.linear(self.norm(x), W, b)
        else:
            W = W / self.sd
            out = F.linear(x, W, b - W @ self.mu)
        return out[..., :H], out[..., H:].unflatten(-1, (H, self.n_v))

    def _scores(self, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return q + pos.unsqueeze(-1).to(q.dtype) * self.pos_w if self.position_bias else q

    def prepare(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x, mask)

    def logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        q, v = self._project(x)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        s = self._scores(q, pos).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        a = torch.softmax(s, dim=1)  # [N, T, H]
        if self.record_attention and not self.training:
            self.last_attention = a.detach()
        if self.attn_dropout and self.training:
            a = F.dropout(a, self.attn_dropout)
        return self.post(torch.einsum("nth,nthv->nv", a, v))

    @torch.no_grad()
    def attention_weights(self, acts: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights `[N, T, H]` for display (zeros on padding)."""
        x, m = self._inputs(acts, mask)
        q, _ = self._project(x)
        pos = (m.cumsum(1) - 1).clamp_min(0)
        return torch.softmax(self._scores(q, pos).masked_fill(~m.unsqueeze(-1), float("-inf")), dim=1)

    def prefix_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """All prefixes at once: log Z_t = logcumsumexp(s)_t and the exp-weighted value sums split into
        positive and negative parts (each a logcumsumexp), so nothing overflows; O(T)."""
        q, v = self._project(x)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        s = self._scores(q, pos).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # [N, T, H]
        log_z = torch.logcumsumexp(s, dim=1).unsqueeze(-1)  # [N, T, H, 1]
        se = s.unsqueeze(-1)
        pos_part = torch.exp(torch.logcumsumexp(se + torch.log(v.clamp_min(0)), dim=1) - log_z)
        neg_part = torch.exp(torch.logcumsumexp(se + torch.log((-v).clamp_min(0)), dim=1) - log_z)
        o = (pos_part - neg_part).nan_to_num(0.0).sum(2)  # [N, T, n_v]; NaN only before the first real token
        return self.post(o)

    # ----- streaming -------------------------------------------------------------------------------------
    def init_state(self, batch: int) -> StreamState:
        """Empty running sums for `batch` sequences, for `step`."""
        if not self.fitted:
            raise RuntimeError("this attention probe is not trained: call fit(...) or load_probe(path) first")
        H, dev = self.n_heads, self.mu.device
        return StreamState(
            torch.full((batch, H), float("-inf"), device=dev), torch.zeros(batch, H, device=dev),
            torch.zeros(batch, H, self.n_v, device=dev), torch.zeros(batch, dtype=torch.long, device=dev),
        )

    @torch.no_grad()
    def step(self, state: StreamState, x_t: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Add one token per row (`x_t` `[B, D]`; `valid` `[B]` bool skips rows, e.g. padding) and return
        the probabilities for the sequences so far; O(1) per token. Updates `state` in place."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"step expects [batch, {self.d_model}] activations, got {tuple(x_t.shape)}")
        q, v = self._project(x_t.float())
        s = self._scores(q, state.pos)  # [B, H]
        m_new = torch.maximum(state.m, s)
        scale = torch.exp(state.m - m_new)
        e = torch.exp(s - m_new)
        z = state.z * scale + e
        num = state.num * scale.unsqueeze(-1) + e.unsqueeze(-1) * v
        keep = torch.ones(len(x_t), dtype=torch.bool, device=x_t.device) if valid is None else valid.bool()
        k = keep.unsqueeze(-1)
        state.m = torch.where(k, m_new, state.m)
        state.z = torch.where(k, z, state.z)
        state.num = torch.where(k.unsqueeze(-1), num, state.num)
        state.pos = state.pos + keep.long()
        o = (state.num / state.z.clamp_min(1e-30).unsqueeze(-1)).sum(1)
        return self.to_probs(self.post(o))
