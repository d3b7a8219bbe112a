"""The store wing: `probescope cache` (build or resume an activation store, a run folder with its page) and
`probescope store verify`. The store's format, writer and reader are `core.store` (every wing reads stores)."""

from .config import CacheConfig
from .run import run_cache_job

__all__ = ["CacheConfig", "run_cache_job"]
