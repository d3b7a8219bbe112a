"""Position-aware steering edits on the residual stream, built on `probescope.core.hooks`.

During `model.generate` with a KV cache (HF's default) the first forward sees the whole (left-padded) prompt and
every later forward sees only the newest token. `PositionTracker` turns that into a phase per forward:
"prompt" for a forward that starts a sequence, "generated" for each cached single-token forward after it. So
the edit is all-or-nothing per forward, which keeps it exact and cheap.

A forward starts a new sequence when it has more than one token, when its batch size changes, or when it is
the first forward inside the context. A 1-token prompt right after another generation is therefore read as
"generated": call `handle.reset()` between such `generate` calls. Generation without a KV cache
(`use_cache=False`) re-runs the whole sequence each step, so every forward counts as "prompt" there.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

from ..core.hooks import ResidualFn, check_layers, d_model, residual_hooks
from .jobs import MODES, POSITIONS  # the one list of each, shared with the CLI's options

Positions = Literal["all", "prompt", "generated"]
Mode = Literal["add", "ablate", "ablate_add"]


@dataclass
class PositionTracker:
    """Phase of the current forward pass: step 0 = the prompt forward, step k > 0 = the k-th generated token."""

    first_layer: int
    step: int = -1
    batch: int | None = None
    forwards: int = 0

    def observe(self, layer: int, hidden: torch.Tensor) -> None:
        """Call at every hooked layer; only the first (shallowest) steered layer advances the state."""
        if layer != self.first_layer:
            return
        b, t = hidden.shape[0], hidden.shape[1]
        if self.step < 0 or t > 1 or b != self.batch:
            self.step = 0
        else:
            self.step += 1
        self.batch = b
        self.forwards += 1

    @property
    def generated(self) -> bool:
        return self.step > 0

    def reset(self) -> None:
        """Treat the next forward as the start of a new sequence (its prompt)."""
        self.step, self.batch = -1, None


def _active(positions: Positions, tracker: PositionTracker) -> bool:
    if positions == "all":
        return True
    return tracker.generated == (positions == "generated")


def steer_edit(
    layer: int,
    vector: torch.Tensor,
    multiplier: float,
    mode: Mode,
    positions: Positions | torch.Tensor,
    tracker: PositionTracker,
) -> ResidualFn:
    """ResidualFn for one layer: add `multiplier * vector`, ablate its direction, or both, where `positions` says.

    `positions` may also be a `[B, T]` bool mask for plain (non-generating) forwards of exactly that shape.
    """
    v = vector.detach().float()
    norm = v.norm()
    if mode != "add" and float(norm) == 0.0:
        raise ValueError(f"cannot ablate a zero vector at layer {layer}: train or load a non-zero vector")
    unit = v / norm.clamp_min(1e-30)
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def consts(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h.dtype, h.device)
        if key not in cache:  # cast once per dtype/device, not every forward
            cache[key] = ((v * multiplier).to(device=h.device, dtype=h.dtype), unit.to(device=h.device, dtype=h.dtype))
        return cache[key]

    def edit(h: torch.Tensor) -> torch.Tensor:
        add, u = consts(h)
        if mode == "add":
            return h + add
        out = h - (h @ u).unsqueeze(-1) * u
        return out + add if mode == "ablate_add" else out

    def fn(hidden: torch.Tensor) -> torch.Tensor | None:
        tracker.observe(layer, hidden)
        if isinstance(positions, torch.Tensor):
            if positions.shape != hidden.shape[:2]:
                raise ValueError(
                    f"position mask has shape {tuple(positions.shape)} but the forward at layer {layer} has "
                    f"[B, T] = {tuple(hidden.shape[:2])}: masks work for plain forwards; use 'prompt'/'generated' "
                    "with generate()"
                )
            m = positions.to(hidden.device).unsqueeze(-1)
            return torch.where(m, edit(hidden), hidden)
        if not _active(positions, tracker):
            return None
        return edit(hidden)

    return fn


@dataclass
class SteeringHandle:
    """What `apply` yields: the tracker (call `reset()` between generate calls with 1-token prompts) and settings."""

    layers: list[int]
    multiplier: float
    mode: str
    positions: str
    tracker: PositionTracker = field(repr=False)

    def reset(self) -> None:
        self.tracker.reset()


def check_positions_mode(positions: object, mode: str) -> None:
    """Raise a clear error for an unknown positions or mode value."""
    if not isinstance(positions, torch.Tensor) and positions not in POSITIONS:
        raise ValueError(f"positions={positions!r}: use one of {', '.join(POSITIONS)} or a [B, T] bool mask")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use 'add', 'ablate' or 'ablate_add'")


@contextmanager
def apply_directions(
    model: nn.Module,
    directions: Mapping[int, torch.Tensor],
    multiplier: float = 1.0,
    positions: Positions | torch.Tensor = "all",
    mode: Mode = "add",
    layers: Sequence[int] | None = None,
) -> Iterator[SteeringHandle]:
    """Steer `model` with per-layer vectors for every forward inside the context; hooks removed on exit."""
    check_positions_mode(positions, mode)
    chosen = list(directions) if layers is None else list(layers)
    ids = check_layers(model, chosen)
    missing = [orig for orig, lay in zip(chosen, ids) if lay not in directions and orig not in directions]
    if missing:
        raise ValueError(f"layers {missing} have no direction in this vector (it has {sorted(directions)})")
    d = d_model(model)
    vecs = {}
    for orig, lay in zip(chosen, ids):
        v = directions[orig] if orig in directions else directions[lay]
        if v.shape != (d,):
            raise ValueError(
                f"the vector for layer {lay} has shape {tuple(v.shape)} but this model's residual width is {d}: "
                "use a vector trained on this model"
            )
        vecs[lay] = v
    tracker = PositionTracker(first_layer=min(vecs))
    edits = {lay: steer_edit(lay, v, float(multiplier), mode, positions, tracker) for lay, v in vecs.items()}
    pos_name = "mask" if isinstance(positions, torch.Tensor) else positions
    with residual_hooks(model, edits):
        yield SteeringHandle(sorted(vecs), float(multiplier), mode, pos_name, tracker)
