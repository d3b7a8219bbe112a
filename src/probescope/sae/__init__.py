"""Sparse autoencoders and transcoders: train, evaluate, label, load from other toolkits.

    from probescope.sae import SAEConfig, TrainConfig, ModelSource, train_sae, evaluate_sae, load_sae
"""

from .config import SAEConfig, TrainConfig
from .core import ARCHS, SAE, ForwardOutput, Latents, register_arch
from .evaluate import evaluate_sae
from .formats import load_sae, save_sae
from .latents import explain, latent_stats
from .sources import ModelSource, StoreSource, TensorSource
from .train import sae_config_for, train_sae

__all__ = [
    "ARCHS", "ForwardOutput", "Latents", "ModelSource", "SAE", "SAEConfig", "StoreSource", "TensorSource",
    "TrainConfig", "evaluate_sae", "explain", "latent_stats", "load_sae", "register_arch", "sae_config_for",
    "save_sae", "train_sae",
]
