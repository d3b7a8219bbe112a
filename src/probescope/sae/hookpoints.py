"""Hook points an SAE reads or writes: the residual stream after a block, or a block's MLP input/output.

Names: "resid_post.L" (what `probescope.core.capture` calls layer L), "mlp_in.L", "mlp_out.L". Residual hooks go
through `probescope.core.hooks.residual_hooks`; MLP hooks are plain forward hooks on the block's `mlp` module,
always removed in a `finally`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..core.hooks import check_layers, find_blocks, read_into, residual_hooks, stop_forward

KINDS = ("resid_post", "mlp_in", "mlp_out")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


def parse_hook(hook: str | int) -> tuple[str, int]:
    """"resid_post.10" → ("resid_post", 10); a bare int or "10" means the residual stream after block 10."""
    if isinstance(hook, int) or str(hook).lstrip("-").isdigit():
        return "resid_post", int(hook)
    kind, _, layer = str(hook).rpartition(".")
    if kind not in KINDS or not layer.lstrip("-").isdigit():
        raise ValueError(f"hook point {hook!r} is not understood: use resid_post.L, mlp_in.L or mlp_out.L (e.g. resid_post.10)")
    return kind, int(layer)


def hook_name(kind: str, layer: int) -> str:
    return f"{kind}.{layer}"


def normalize_hook(model: nn.Module, hook: str | int) -> str:
    """Canonical name of `hook` for this model (negative layers counted from the end, range checked)."""
    kind, layer = parse_hook(hook)
    return hook_name(kind, check_layers(model, [layer])[0])


def mlp_module(model: nn.Module, layer: int) -> nn.Module:
    """The MLP of block `layer` (or a clear error naming what the block has)."""
    block = find_blocks(model).layers[layer]
    for name in MLP_NAMES:
        m = getattr(block, name, None)
        if isinstance(m, nn.Module):
            return m
    kids = ", ".join(n for n, _ in block.named_children())
    raise TypeError(f"block {layer} has no MLP under {MLP_NAMES} (its children: {kids}); use a resid_post hook point")


@torch.no_grad()
def capture_hooks(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, hooks: Sequence[str]
) -> dict[str, torch.Tensor]:
    """[B, T, d] activations at each named hook point, stopping the forward after the deepest block."""
    parsed = {h: parse_hook(h) for h in hooks}
    deepest = max(layer for _, layer in parsed.values())
    resid: dict[int, list[torch.Tensor]] = {}
    got: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    handles = []
    for h, (kind, layer) in parsed.items():
        if kind == "resid_post":
            resid.setdefault(layer, got[h])
        else:
            def hook(mod, args, output, h=h, kind=kind):
                got[h].append((args[0] if kind == "mlp_in" else output).detach())

            handles.append(mlp_module(model, layer).register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with residual_hooks(model, {layer: read_into(store) for layer, store in resid.items()}, stop_after=deepest):
            with stop_forward():
                model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    for h, (kind, layer) in parsed.items():
        if kind == "resid_post" and not got[h]:
            got[h] = resid[layer]
    return {h: got[h][0] for h in hooks}


@contextmanager
def splice(model: nn.Module, hook_in: str, hook_out: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the activation at `hook_out` by `fn(activation at hook_in)` for every forward inside.

    SAEs (hook_in == hook_out): any kind. Transcoders: hook_in "mlp_in.L" with hook_out "mlp_out.L".
    """
    kin, lin = parse_hook(hook_in)
    kout, lout = parse_hook(hook_out)
    if (kin, lin) == (kout, lout) and kin == "resid_post":
        with residual_hooks(model, {lin: fn}):
            yield
        return
    if kout == "mlp_out" and lin == lout and kin in ("mlp_in", "mlp_out"):
        def hook(mod, args, output):
            src = args[0] if kin == "mlp_in" else output
            return fn(src).to(output.dtype)

        handle = mlp_module(model, lout).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
        return
    if kin == "mlp_in" and kout == "mlp_in" and lin == lout:
        def pre_hook(mod, args):
            return (fn(args[0]).to(args[0].dtype), *args[1:])

        handle = mlp_module(model, lin).register_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            handle.remove()
        return
    raise ValueError(
        f"cannot splice {hook_in} → {hook_out}: supported are an SAE at one point, or a transcoder mlp_in.L → mlp_out.L"
    )
