"""The KV cache of a HF causal LM's forward, under the name the installed transformers uses.

transformers renamed the forward's `past_key_values=` to `cache=` (and the output's `.past_key_values` to
`.cache`); the old names still work in 5.x but warn on every run (a FutureWarning for the keyword, a logged
deprecation for the attribute). `cached_forward` passes the cache under the name the model's forward declares
(read once per model class from its signature) and `returned_cache` reads it back without touching the old
attribute when the new one is there, so our decode loops warn about nothing on either side of the rename.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

__all__ = ["cache_keyword", "cached_forward", "returned_cache"]


@functools.lru_cache(maxsize=None)
def _keyword_of(forward_owner: type) -> str:
    try:
        params = inspect.signature(forward_owner.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature: the name every 5.x accepts
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(model: nn.Module) -> str:
    """`"cache"` when the model's forward declares a `cache` parameter (newer transformers), else
    `"past_key_values"`."""
    return _keyword_of(type(model))


def cached_forward(model: nn.Module, cache: Any, **inputs: Any) -> Any:
    """`model(**inputs, use_cache=True)` with `cache` passed under the forward's own keyword (see the module doc).
    `cache=None` lets the model start a new one (read it back with `returned_cache`)."""
    kw = {cache_keyword(model): cache} if cache is not None else {}
    return model(**inputs, use_cache=True, **kw)


def returned_cache(out: Any) -> Any:
    """The cache a forward returned: `out.cache` where the output has that field, else `out.past_key_values`
    (older transformers, where it is the real field and does not warn)."""
    if "cache" in getattr(out, "__dataclass_fields__", {}):
        return out.cache
    return getattr(out, "past_key_values", None)
