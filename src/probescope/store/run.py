"""The `probescope cache` job: build (or resume) an activation store with `core.store.build_store`, then make its
folder a run folder (config, metrics, report page) on rank 0. The store itself is core (every wing reads it); the
job that builds it from the CLI is this wing's, like any other job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import CacheConfig


def run_cache_job(cfg: CacheConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Build (or resume) the store `cfg` describes, from `cfg.model` (or the given model and tokenizer); its summary
    (tokens, layers, repairs)."""
    from ..core.data import corpus_name
    from ..core.store import build_store
    from ..report.job import open_job
    from ..report.runs import RunDir, check_out

    check_out(cfg.out, "cache")  # never build a store inside another kind of run
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(20, "--out is a file, not a folder", str(out))
    with open_job(cfg, "cache", model, tokenizer) as job:
        if job.tokenizer is None:
            raise ValueError(f"model '{cfg.model}' has no tokenizer files: caching texts needs one")
        store = build_store(job.model, job.tokenizer, job.texts(), cfg.layers, cfg.out, context_len=cfg.context_len,
                            max_tokens=cfg.max_tokens, dtype=cfg.dtype, batch_size=cfg.batch_size,
                            shard_contexts=cfg.shard_contexts, data_name=corpus_name(cfg.data),
                            quiet=cfg.quiet, resume=cfg.resume)
    summary = {"store": str(store.path), "complete": store.complete, "tokens": store.n_tokens,
               "layers": store.layers, "d_model": store.d_model,
               "repaired": {str(i): why for i, why in store.repaired.items()}}
    if int(os.environ.get("RANK", "0")) == 0:  # the store folder doubles as the run folder (rank 0 writes its page)
        rd = RunDir(store.path, kind="cache", overwrite=True)  # the manifest check is the settings rule
        rd.write_config(cfg)
        rd.write_metrics(summary, report=False)
    return summary
