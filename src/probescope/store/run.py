"""The `probescope cache` job: build (or resume) an activation store with `core.store.run_cache`, then make its
folder a run folder (config, metrics, report page) on rank 0. The store itself is core (every wing reads it); the
job that builds it from the CLI is this wing's, like any other job."""

from __future__ import annotations

import os
from typing import Any

from ..report.runs import RunDir, check_out


def run_cache_job(cfg: Any) -> dict[str, Any]:
    """Build the store described by `cfg` (a `core.store.CacheConfig`); its summary (tokens, layers, repairs)."""
    from ..core.store import run_cache

    cfg.validate()
    check_out(cfg.out, "cache")  # never build a store inside another kind of run
    store = run_cache(cfg, quiet=getattr(cfg, "quiet", None))
    summary = {"store": str(store.path), "complete": store.complete, "tokens": store.n_tokens,
               "layers": store.layers, "d_model": store.d_model,
               "repaired": {str(i): why for i, why in store.repaired.items()}}
    if int(os.environ.get("RANK", "0")) == 0:  # the store folder doubles as the run folder (rank 0 writes its page)
        rd = RunDir(store.path, kind="cache", overwrite=True)  # the manifest check is the settings rule
        rd.write_config(cfg)
        rd.write_metrics(summary, report=False)
    return summary
