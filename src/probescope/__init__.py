"""probescope: read a language model's activations and put them to work."""

from .core.capture import Capture, capture, tokenize
from .core.hooks import find_blocks, residual_hooks
from .core.models.registry import DEFAULT_MODEL, list_models, load_model, model_id

__all__ = [
    "Capture",
    "DEFAULT_MODEL",
    "capture",
    "find_blocks",
    "list_models",
    "load_model",
    "model_id",
    "residual_hooks",
    "tokenize",
]
__version__ = "0.1.0"
