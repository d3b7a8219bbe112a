"""probescope: read a language model's activations and put them to work.

The names below load on first use (PEP 562), so `probescope` on the command line can say it is starting before
torch and transformers are imported."""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Capture": ".core.capture", "capture": ".core.capture", "tokenize": ".core.capture",
    "find_blocks": ".core.hooks", "residual_hooks": ".core.hooks",
    "DEFAULT_MODEL": ".core.models.registry", "list_models": ".core.models.registry",
    "load_model": ".core.models.registry", "model_id": ".core.models.registry",
}

__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probescope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
