"""Patching wing: activation patching (exact, batched) and attribution patching over named site grids."""

from .core import FAMILIES, PatchGrid, activation_patching, agreement, attribution_patching, logit_diff
from .run import PatchConfig, run_patching

__all__ = ["FAMILIES", "PatchConfig", "PatchGrid", "activation_patching", "agreement", "attribution_patching",
           "logit_diff", "run_patching"]
