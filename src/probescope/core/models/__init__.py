"""Models by name: the registry (built-in GGUF models, local HF folders, .gguf files), tiny test models, the
shipped reasoner, and LoRA adapters. Importing this package registers every built-in name."""

from .adapters import load_adapter
from .registry import (
    BUILTIN,
    DEFAULT_MODEL,
    BuiltinModel,
    cache_dir,
    list_models,
    load_gguf,
    load_model,
    model_id,
    register_model,
    resolve_device,
)

__all__ = ["BUILTIN", "DEFAULT_MODEL", "BuiltinModel", "cache_dir", "list_models", "load_adapter", "load_gguf",
           "load_model", "model_id", "register_model", "resolve_device"]
