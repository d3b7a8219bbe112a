"""Early exit of chain-of-thought: stop reasoning once an attention probe on the residual stream is sure of
the model's final answer (issue #5). See docs/early_exit.md."""

from .calibrate import Calibration, Trace, calibrate, simulate
from .generate import ExitPolicy, ExitResult, ExitRow, generate_with_exit
from .hf import EarlyExit

__all__ = ["EarlyExit", "ExitPolicy", "ExitResult", "ExitRow", "generate_with_exit", "Calibration", "Trace", "calibrate", "simulate"]
