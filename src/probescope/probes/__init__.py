"""Probes on a model's activations: linear, attention, MLP and sparse (SAE-latent) kinds, one trainer,
one metrics module, every-prefix predictions, built-in generated tasks, sweeps and domain shift."""

from .base import KINDS, Probe, load_probe, make_probe, register
from .data import Acts, ProbeDataset, featurize, load_dataset
from .train import FitConfig
from .linear import LinearProbe
from .attention import AttentionProbe, StreamState
from .mlp import MLPProbe
from .sparse import SparseProbe
from . import metrics

__all__ = [
    "Acts", "AttentionProbe", "FitConfig", "KINDS", "LinearProbe", "MLPProbe", "Probe", "ProbeDataset",
    "SparseProbe", "StreamState", "featurize", "load_dataset", "load_probe", "make_probe", "metrics", "register",
]
