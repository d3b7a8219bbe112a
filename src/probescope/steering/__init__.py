"""Steering: vectors from contrastive pairs, SAEs or probes, added/ablated in the residual stream at chosen
positions (prompt, generated, all), saved as safetensors + JSON, exported as llama.cpp control vectors."""

from .apply import PositionTracker, SteeringHandle, apply_directions, steer_edit
from .gguf_export import export_gguf, read_gguf
from .train import TrainConfig, aggregate, pair_activations
from .vector import SteeringVector

__all__ = [
    "PositionTracker", "SteeringHandle", "SteeringVector", "TrainConfig", "aggregate", "apply_directions",
    "export_gguf", "pair_activations", "read_gguf", "steer_edit",
]
