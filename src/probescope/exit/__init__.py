"""Early exit of chain-of-thought: stop reasoning once an attention probe on the residual stream is sure of
the model's final answer (issue #5). One engine (#33): `ExitPolicy` owns the rule (τ, boundaries, answer kind) and
replays it offline; `ExitDecoder` makes the per-row decisions for `generate_with_exit` and `EarlyExit`.
See docs/early_exit.md."""

from .calibrate import Calibration, Trace, calibrate, load_calibration, simulate
from .drift import ExitDriftWarning
from .engine import ExitDecoder
from .generate import ExitPolicy, ExitResult, ExitRow, generate_with_exit
from .hf import EarlyExit

__all__ = ["EarlyExit", "ExitDecoder", "ExitDriftWarning", "ExitPolicy", "ExitResult", "ExitRow", "generate_with_exit",
           "Calibration", "Trace", "calibrate", "load_calibration", "simulate"]
