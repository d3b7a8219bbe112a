"""Unlearning methods in one registry: RMU (as published, scaled to the layer's norm), gradient ascent, NPO, and
`rmu-adv` (RMU with the one-direction ablation attack in the loop).

Each method is a class with `prepare(ctx)` (precompute what it needs from the frozen model: activations, reference
log-probabilities) and `loss(ctx, step, forget_batch_index, retain_batch_index) -> (loss, stats)`. The registry
refuses a duplicate name; valid names come from it (`METHODS`).

RMU (Li et al. 2024): at layer ℓ (resid_post.ℓ), `mse(h_ℓ(x_f), c·u) + α·mse(h_ℓ(x_r), h_ℓ^frozen(x_r))`, u a fixed
random unit vector, the forward stopped at ℓ, only the MLPs of a few layers ≤ ℓ updated. Position 0 (the
attention sink, whose norm is ~2× the others) and padding are masked out of every loss and every norm estimate.
c = `steering_scale` × the median token norm of resid_post.ℓ on the forget texts: the published c = 6.5–20 was
tuned for Zephyr-7B's norms and does nothing on a small model whose norms are ~100.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.sites import site_hooks, stop_forward

METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"unlearning method {name!r} is already registered")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> "Method":
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]()


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T] right padded
    att: torch.Tensor  # [B, T]

    @property
    def loss_mask(self) -> torch.Tensor:
        """Real tokens other than position 0."""
        m = self.att.bool().clone()
        m[:, 0] = False
        return m


@dataclass
class Context:
    """What a method sees: the model being trained, the batches, the config and a scratch dict for precomputed state."""

    model: nn.Module
    forget: list[Batch]
    retain: list[Batch]
    config: Any
    layer: int
    state: dict[str, Any] = field(default_factory=dict)


def read_at(model: nn.Module, batch: Batch, site: str, stop: bool = True, edits: dict | None = None) -> torch.Tensor:
    """The tensor at `site` for `batch`, in the graph (the forward stops there)."""
    got: list[torch.Tensor] = []
    fns: dict = dict(edits or {})
    fns.setdefault(site, [])
    fns[site] = [*(fns[site] if isinstance(fns[site], list) else [fns[site]]), lambda x: got.append(x)]
    dev = next(model.parameters()).device
    with site_hooks(model, fns, stop_after=site if stop else None):
        with stop_forward():
            model(input_ids=batch.ids.to(dev), attention_mask=batch.att.to(dev), use_cache=False)
    return got[-1]


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of the mean squared error over the width."""
    m = mask.to(h.device)
    return ((h - target) ** 2).mean(-1)[m].mean()


def token_norms(model: nn.Module, batches: list[Batch], site: str) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([read_at(model, b, site).norm(dim=-1)[b.loss_mask.to(b.ids.device)].float().cpu()
                          for b in batches])


def seq_logprob(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sequence summed log-prob of tokens 1.., tokens per sequence) over real tokens."""
    dev = next(model.parameters()).device
    ids, att = batch.ids.to(dev), batch.att.to(dev)
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    m = att[:, 1:].float()
    return (lp * m).sum(1), m.sum(1)


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    s, n = seq_logprob(model, batch)
    return -s.sum() / n.sum()


class Method:
    name = ""
    default_lr = 1e-3

    def prepare(self, ctx: Context) -> dict[str, Any]:
        return {}

    def loss(self, ctx: Context, step: int, fi: int, ri: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def _unit(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(d, generator=g)  # as published: uniform [0, 1), normalised
    return u / u.norm()


@register("rmu")
class RMU(Method):
    """Representation misdirection: forget activations → c·u at layer ℓ; retain activations kept."""

    default_lr = 1e-3

    def prepare(self, ctx: Context) -> dict[str, Any]:
        site = f"resid_post.{ctx.layer}"
        norms = token_norms(ctx.model, ctx.forget, site)
        median = float(norms.median())
        c = ctx.config.steering_scale * median
        d = read_at(ctx.model, ctx.forget[0], site).shape[-1]
        u = _unit(d, ctx.config.seed)
        with torch.no_grad():
            ctx.state["frozen_retain"] = [read_at(ctx.model, b, site).detach() for b in ctx.retain]
        ctx.state["target"] = c * u
        return {"site": site, "median_token_norm": median, "c": c}

    def loss(self, ctx: Context, step: int, fi: int, ri: int) -> tuple[torch.Tensor, dict[str, float]]:
        site = f"resid_post.{ctx.layer}"
        fb, rb = ctx.forget[fi], ctx.retain[ri]
        hf = read_at(ctx.model, fb, site)
        lf = masked_mse(hf, ctx.state["target"].to(hf.device, hf.dtype), fb.loss_mask)
        hr = read_at(ctx.model, rb, site)
        lr = masked_mse(hr, ctx.state["frozen_retain"][ri].to(hr.device), rb.loss_mask)
        return lf + ctx.config.alpha * lr, {"forget": float(lf.detach()), "retain": float(lr.detach())}


@register("rmu-adv")
class RMUAdversarial(RMU):
    """RMU with the one-direction ablation attack in the loop.

    Besides RMU's loss at ℓ, the forget forward runs one block further: at ℓ+1 the current estimate of the
    misdirection direction r (running mean of h_ℓ+1 − h_ℓ+1^frozen over forget tokens) is projected out, as the attack
    does, and what is left is pushed to c·u₂ (a second fixed random unit vector, orthogonal to r): once r is removed,
    the activation must still be misdirected rather than fall back to the original.
    """

    def prepare(self, ctx: Context) -> dict[str, Any]:
        info = super().prepare(ctx)
        nxt = f"resid_post.{ctx.layer + 1}"
        with torch.no_grad():
            ctx.state["frozen_forget_next"] = [read_at(ctx.model, b, nxt).detach() for b in ctx.forget]
        d = ctx.state["target"].shape[0]
        ctx.state["u2"] = _unit(d, ctx.config.seed + 1)
        ctx.state["r"] = None
        ctx.state["c"] = info["c"]
        return {**info, "adv_site": nxt}

    def loss(self, ctx: Context, step: int, fi: int, ri: int) -> tuple[torch.Tensor, dict[str, float]]:
        site, nxt = f"resid_post.{ctx.layer}", f"resid_post.{ctx.layer + 1}"
        fb, rb = ctx.forget[fi], ctx.retain[ri]
        got: dict[str, torch.Tensor] = {}
        dev = next(ctx.model.parameters()).device
        with site_hooks(ctx.model, {site: lambda x: got.__setitem__("l", x), nxt: lambda x: got.__setitem__("n", x)},
                        stop_after=nxt):
            with stop_forward():
                ctx.model(input_ids=fb.ids.to(dev), attention_mask=fb.att.to(dev), use_cache=False)
        m = fb.loss_mask.to(dev)
        lf = masked_mse(got["l"], ctx.state["target"].to(dev), fb.loss_mask)
        hn = got["n"]
        diff = (hn.detach() - ctx.state["frozen_forget_next"][fi].to(dev))[m].mean(0)
        r = diff if ctx.state["r"] is None else 0.9 * ctx.state["r"].to(dev) + 0.1 * diff
        ctx.state["r"] = r.detach()
        rh = r / r.norm().clamp_min(1e-8)
        attacked = hn - (hn @ rh).unsqueeze(-1) * rh
        u2 = ctx.state["u2"].to(dev)
        u2 = u2 - (u2 @ rh) * rh
        u2 = u2 / u2.norm().clamp_min(1e-8)
        la = masked_mse(attacked, ctx.state["c"] * u2, fb.loss_mask)
        hr = read_at(ctx.model, rb, site)
        lr = masked_mse(hr, ctx.state["frozen_retain"][ri].to(dev), rb.loss_mask)
        w = ctx.config.adv_weight
        return lf + w * la + ctx.config.alpha * lr, {"forget": float(lf.detach()), "adv": float(la.detach()), "retain": float(lr.detach())}


@register("ga")
class GradientAscent(Method):
    """Gradient ascent on the forget texts' LM loss, plus α × the retain texts' LM loss."""

    default_lr = 1e-4

    def loss(self, ctx: Context, step: int, fi: int, ri: int) -> tuple[torch.Tensor, dict[str, float]]:
        lf = lm_loss(ctx.model, ctx.forget[fi])
        lr = lm_loss(ctx.model, ctx.retain[ri])
        return -lf + ctx.config.alpha_lm * lr, {"forget_ce": float(lf.detach()), "retain_ce": float(lr.detach())}


@register("npo")
class NPO(Method):
    """Negative preference optimisation (Zhang et al. 2024): −(2/β)·log σ(−β·(log π − log π_ref)) on forget texts,
    plus α × the retain texts' LM loss."""

    default_lr = 1e-4

    def prepare(self, ctx: Context) -> dict[str, Any]:
        with torch.no_grad():
            ctx.state["ref"] = [seq_logprob(ctx.model, b)[0].detach() for b in ctx.forget]
        return {}

    def loss(self, ctx: Context, step: int, fi: int, ri: int) -> tuple[torch.Tensor, dict[str, float]]:
        beta = ctx.config.beta
        lp, _ = seq_logprob(ctx.model, ctx.forget[fi])
        ratio = lp - ctx.state["ref"][fi].to(lp.device)
        lf = -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()
        lr = lm_loss(ctx.model, ctx.retain[ri])
        return lf + ctx.config.alpha_lm * lr, {"npo": float(lf.detach()), "retain_ce": float(lr.detach()), "log_ratio": float(ratio.detach().mean())}
