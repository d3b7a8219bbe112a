"""Splice an SAE or transcoder into a model: the activation at `hook_out` replaced by `fn(activation at hook_in)`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..core.sites import n_layers, resolve_site, site_hooks


@contextmanager
def splice(model: nn.Module, hook_in: str, hook_out: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """For every forward inside, replace the activation at `hook_out` by `fn(activation at hook_in)`.

    An SAE reads and writes one site; a transcoder reads an earlier site (e.g. mlp_in.L) and writes a later one
    (mlp_out.L). Any pair of sites works where `hook_in` runs no later than `hook_out`.
    """
    s_in, s_out = resolve_site(model, hook_in), resolve_site(model, hook_out)
    if s_in == s_out:
        with site_hooks(model, {s_out: lambda h: fn(h).to(h.dtype)}):
            yield
        return
    n = n_layers(model)
    if s_in.order(n) > s_out.order(n):
        raise ValueError(f"cannot splice {s_in} → {s_out}: the read site runs after the written one "
                         f"(a transcoder reads an earlier site, e.g. mlp_in.L → mlp_out.L)")
    seen: list[torch.Tensor] = []

    def read(h: torch.Tensor) -> None:
        seen.append(h)

    def write(h: torch.Tensor) -> torch.Tensor:
        return fn(seen.pop()).to(h.dtype)

    with site_hooks(model, {s_in: read, s_out: write}):
        yield
