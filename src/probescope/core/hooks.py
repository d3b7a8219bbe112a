"""Edits made at hook sites, and `residual_hooks`, the integer-layer short form of `sites.site_hooks`.

Every feature (capture, steering, ablation, gradient filters, concept attribution, patching) registers its
hooks through `probescope.core.sites.site_hooks`; the edit factories here (`read_into`, `add_vector`,
`project_out`, `filter_gradient`) work at any site whose tensor is [..., d].

Layer `i` means the residual stream *after* block `i` (0-based): HF's `hidden_states[i + 1]`, except for
the last block, where HF's last entry has the final norm applied and the block output does not.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .sites import (  # noqa: F401  (re-exported: the residual short form's helpers)
    BLOCK_PATHS,
    Blocks,
    Site,
    SiteFn,
    StopForward,
    check_layers,
    d_model,
    find_blocks,
    n_layers,
    site_hooks,
    stop_forward,
    tap_grad,
    unwrap,
)

ResidualFn = SiteFn


@contextmanager
def residual_hooks(
    model: nn.Module,
    edits: dict[int, ResidualFn | Sequence[ResidualFn]],
    stop_after: int | None = None,
) -> Iterator[None]:
    """`site_hooks` on `resid_post.L` for each integer layer L: the short form every residual feature uses.

    An edit returns a replacement tensor or None (read only). With `stop_after=L` the forward raises
    `StopForward` once block L has run (catch it with `stop_forward()`), so later blocks cost nothing.
    """
    check_layers(model, list(edits) + ([stop_after] if stop_after is not None else []))
    sites = {Site("resid_post", int(layer)): fn for layer, fn in edits.items()}
    stop = Site("resid_post", stop_after) if stop_after is not None else None
    with site_hooks(model, sites, stop_after=stop):
        yield


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
        tap_grad(hidden, grad_fn)

    return fn
