"""Sparse autoencoders and transcoders: train, evaluate, label, load from other toolkits."""

from .config import SAEConfig, TrainConfig
from .core import ARCHS, SAE, ForwardOutput, Latents, register_arch

__all__ = ["ARCHS", "ForwardOutput", "Latents", "SAE", "SAEConfig", "TrainConfig", "register_arch"]
