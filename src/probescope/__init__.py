"""probescope: read a language model's activations and put them to work."""

from .capture import Capture, capture, tokenize
from .hooks import find_blocks, residual_hooks
from .models import DEFAULT_MODEL, list_models, load_model, model_id

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
