"""Evaluate an SAE: FVU, L0, dead fraction, and (with a model) LM loss recovered and KL when spliced in."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .core import SAE
from .splice import splice
from .sources import ActivationSource


@torch.no_grad()
def activation_metrics(sae: SAE, source: ActivationSource, tokens: int = 65536, batch_size: int = 4096, seed: int = 1234) -> dict[str, float]:
    """FVU (over all tokens), mean L0 and the fraction of latents that never fire over `tokens` tokens."""
    sae.eval()
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=sae.device)
    sse = sy = syy = 0.0
    n = 0
    l0_sum = 0.0
    for x, y in source.batches(batch_size, seed=seed):
        x = x.to(sae.device)
        y = x if y is None else y.to(sae.device)
        out = sae(x, y)
        sse += float((y - out.reconstruction).double().pow(2).sum())
        sy_vec = y.double().sum(0)
        sy = sy + sy_vec if isinstance(sy, torch.Tensor) else sy_vec
        syy += float(y.double().pow(2).sum())
        l0_sum += float(out.l0) * x.shape[0]
        fired |= out.latents.fired()
        n += x.shape[0]
        if n >= tokens:
            break
    total_var = syy - float((sy * sy).sum()) / n
    return {"fvu": sse / max(total_var, 1e-12), "l0": l0_sum / n, "dead_frac": float((~fired).float().mean()),
            "eval_tokens": n}


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token loss (float) on positions that predict a kept token, and the log-probs."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return nll[keep[:, 1:]], logp


@torch.no_grad()
def lm_metrics(sae: SAE, model: Any, input_ids: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Loss of the clean model, with the SAE spliced in, and with the hook point zero-ablated; KL(clean‖SAE).

    loss_recovered = (L_zero − L_sae) / (L_zero − L_orig).
    """
    sae.eval()
    device = next(model.parameters()).device
    hook_in, hook_out = sae.cfg.hook_in, sae.cfg.hook_out
    if not hook_in:
        raise ValueError("the SAE names no hook point (cfg.hook_in is empty): set it, e.g. resid_post.10")
    sums = {"orig": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    n = 0
    bos = getattr(getattr(model, "config", None), "bos_token_id", None)

    def recon(h: torch.Tensor) -> torch.Tensor:
        return sae(h.reshape(-1, h.shape[-1]).to(sae.device, sae.W_enc.dtype), None if not sae.transcoder else torch.zeros(
            h.shape[:-1].numel(), sae.cfg.d_out, device=sae.device)).reconstruction.reshape(*h.shape[:-1], sae.cfg.d_out).to(h.dtype).to(h.device)

    def recon_keep_bos(h: torch.Tensor) -> torch.Tensor:
        out = recon(h)
        if bos is not None and ids.shape[1] > 0 and bool((ids[:, 0] == bos).all()):
            out[:, 0] = h[:, 0] if out.shape == h.shape else out[:, 0]  # BOS activations are outliers: keep them
        return out

    for s in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[s : s + batch_size].to(device)
        keep = torch.ones_like(ids, dtype=torch.bool)
        clean = model(input_ids=ids, use_cache=False).logits
        l_orig, lp_orig = _lm_loss(clean, ids, keep)
        with splice(model, hook_in, hook_out, recon_keep_bos):
            l_sae, lp_sae = _lm_loss(model(input_ids=ids, use_cache=False).logits, ids, keep)
        with splice(model, hook_in, hook_out, lambda h: torch.zeros_like(h) if sae.cfg.d_out == h.shape[-1] else
                    torch.zeros(*h.shape[:-1], sae.cfg.d_out, dtype=h.dtype, device=h.device)):
            l_zero, _ = _lm_loss(model(input_ids=ids, use_cache=False).logits, ids, keep)
        kl = (lp_orig.exp() * (lp_orig - lp_sae)).sum(-1)[keep[:, 1:]]
        sums["orig"] += float(l_orig.sum())
        sums["sae"] += float(l_sae.sum())
        sums["zero"] += float(l_zero.sum())
        sums["kl"] += float(kl.sum())
        n += l_orig.numel()
    lo, ls, lz = sums["orig"] / n, sums["sae"] / n, sums["zero"] / n
    return {"loss_orig": lo, "loss_sae": ls, "loss_zero": lz,
            "loss_recovered": (lz - ls) / (lz - lo) if lz != lo else float("nan"), "kl": sums["kl"] / n, "lm_tokens": n}


def evaluate_sae(
    sae: SAE,
    source: ActivationSource | None = None,
    *,
    model: Any = None,
    input_ids: torch.Tensor | None = None,
    tokens: int = 65536,
    batch_size: int = 4096,
) -> dict[str, float]:
    """All metrics that the inputs allow: activation metrics from `source`, LM metrics from `model` + `input_ids`."""
    out: dict[str, float] = {}
    if source is not None:
        out |= activation_metrics(sae, source, tokens=tokens, batch_size=batch_size)
    if model is not None and input_ids is not None:
        out |= lm_metrics(sae, model, input_ids)
    if not out:
        raise ValueError("nothing to evaluate: pass an activation source and/or a model with input_ids")
    return out


__all__ = ["activation_metrics", "evaluate_sae", "lm_metrics"]
