"""The one hook layer: residual-stream hook points of a model family, and the edits made at them.

Every feature (capture, steering, ablation, gradient filters, concept attribution) goes through
`residual_hooks`, a context manager that registers plain PyTorch forward hooks on the model's own
blocks and always removes them, errors included. Nothing reimplements the model, so numerics are HF's.

Layer `i` means the residual stream *after* block `i` (0-based): HF's `hidden_states[i + 1]`, except for
the last block, where HF's last entry has the final norm applied and the block output does not.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

# Paths to the block list and the final norm, tried in order; PEFT wrappers are unwrapped first.
FAMILY_PATHS: list[tuple[str, str, str]] = [
    ("llama-like", "model.layers", "model.norm"),  # llama, gemma, gemma3, mistral, qwen2/3, phi3, olmo
    ("gemma3-multimodal", "model.language_model.layers", "model.language_model.norm"),
    ("gpt2", "transformer.h", "transformer.ln_f"),
    ("gpt-neox", "gpt_neox.layers", "gpt_neox.final_layer_norm"),
    ("opt", "model.decoder.layers", "model.decoder.final_layer_norm"),
]

ResidualFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised by a hook to end the forward pass once the deepest needed layer has run."""


def _get(obj: object, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying HF model of a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass(frozen=True)
class Blocks:
    family: str
    layers: nn.ModuleList
    final_norm: nn.Module | None

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def find_blocks(model: nn.Module) -> Blocks:
    """Locate the transformer blocks and final norm of an HF causal LM (or raise a clear error)."""
    base = unwrap(model)
    for family, layers_path, norm_path in FAMILY_PATHS:
        layers = _get(base, layers_path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return Blocks(family, layers, _get(base, norm_path))
    raise TypeError(
        f"cannot find the transformer blocks of {type(base).__name__}: probescope knows the layouts "
        f"{', '.join(p for _, p, _ in FAMILY_PATHS)}; add yours to probescope.hooks.FAMILY_PATHS"
    )


def n_layers(model: nn.Module) -> int:
    """Number of transformer blocks."""
    return find_blocks(model).n_layers


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    cfg = unwrap(model).config
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("hidden_size", "n_embd", "d_model"):
        if hasattr(cfg, key):
            return int(getattr(cfg, key))
    raise TypeError(f"cannot read the residual width from the config of {type(model).__name__}")


def check_layers(model: nn.Module, layers: int | Sequence[int]) -> list[int]:
    """Validate layer indices (negative counts from the end) and return them as non-negative ints."""
    if isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("no layers requested: pass at least one layer index, e.g. layers=[6]")
    n = n_layers(model)
    out = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer {layer!r} is not an int")
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1}, or -1 for the last)")
        out.append(layer % n)
    return out


def _split(output):
    if isinstance(output, tuple):
        return output[0], output[1:]
    return output, None


def _join(hidden: torch.Tensor, rest):
    return hidden if rest is None else (hidden, *rest)


@contextmanager
def residual_hooks(
    model: nn.Module,
    edits: dict[int, ResidualFn | Sequence[ResidualFn]],
    stop_after: int | None = None,
) -> Iterator[None]:
    """Run `edits[layer](hidden)` on the residual stream after each listed block, for every forward inside.

    An edit returns a replacement tensor or None (read only). With `stop_after=L` the forward raises
    `StopForward` once block L has run (catch it with `stop_forward()`), so later blocks cost nothing.
    Hooks are removed when the context exits, whatever happens inside.
    """
    blocks = find_blocks(model)
    layers = check_layers(model, list(edits) + ([stop_after] if stop_after is not None else []))
    fns = {
        layer: list(fn) if isinstance(fn, (list, tuple)) else [fn]
        for layer, fn in zip(layers[: len(edits)], edits.values())
    }
    stop = layers[-1] if stop_after is not None else None
    handles = []

    def make_hook(layer: int):
        def hook(module, args, output):
            hidden, rest = _split(output)
            changed = False
            for fn in fns.get(layer, ()):
                new = fn(hidden)
                if new is not None:
                    hidden, changed = new, True
            if layer == stop:
                raise StopForward(layer)
            return _join(hidden, rest) if changed else None

        return hook

    try:
        for layer in sorted(set(fns) | ({stop} if stop is not None else set())):
            handles.append(blocks.layers[layer].register_forward_hook(make_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def stop_forward() -> Iterator[None]:
    """Swallow the `StopForward` raised by `residual_hooks(..., stop_after=L)`."""
    try:
        yield
    except StopForward:
        pass


# ----------------------------------------------------------------------------------------------------------
# Edits: small factories of ResidualFn, shared by capture, steering, ablation and gradient filters.
# ----------------------------------------------------------------------------------------------------------


def read_into(store: list[torch.Tensor], detach: bool = True) -> ResidualFn:
    """Append the residual stream (detached unless asked) to `store`; change nothing."""

    def fn(hidden: torch.Tensor) -> None:
        store.append(hidden.detach() if detach else hidden)

    return fn


def add_vector(vector: torch.Tensor, mask: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ResidualFn:
    """Add `vector` (shape [d]) at every position, or where `mask(hidden)` ([B, T] bool) is true."""

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        v = vector.to(hidden.dtype).to(hidden.device)
        if mask is None:
            return hidden + v
        m = mask(hidden).to(hidden.device).unsqueeze(-1).to(hidden.dtype)
        return hidden + m * v

    return fn


def orthonormal(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ([k, d]) of the span of the rows of `directions` ([k, d] or [d])."""
    d = directions.reshape(-1, directions.shape[-1]).double()
    q, r = torch.linalg.qr(d.T)
    keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max().clamp_min(1e-30)
    return q.T[keep].to(directions.dtype)


def project_out(directions: torch.Tensor) -> ResidualFn:
    """Remove the span of `directions` from the residual stream: x − QQᵀx (as in CAFT)."""
    q = orthonormal(directions)

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        qq = q.to(hidden.dtype).to(hidden.device)
        return hidden - (hidden @ qq.T) @ qq

    return fn


def filter_gradient(grad_fn: Callable[[torch.Tensor], torch.Tensor]) -> ResidualFn:
    """Leave the forward alone; replace the gradient flowing back through this point by `grad_fn(grad)`."""

    def fn(hidden: torch.Tensor) -> None:
        if hidden.requires_grad:
            hidden.register_hook(grad_fn)

    return fn
