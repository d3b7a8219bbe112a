"""The unlearning wing's CLI commands: `probescope unlearn [run]` (`UnlearnRunConfig`, its nested `UnlearnConfig`
flattened into the options) and `probescope unlearn audit RUN` (`AuditConfig`), one `run_*_job` each.

The Python API does the work: `run_unlearn(UnlearnRunConfig(...))` and `run_audit(AuditConfig(...))`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .runner import AuditConfig, UnlearnRunConfig


def run_unlearn_job(cfg: UnlearnRunConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Score before, unlearn, score after, into `cfg.out`; the metrics (without the plot specs). The command's one
    --seed seeds the subject's split and the training."""
    from .runner import run_unlearn

    cfg = dataclasses.replace(cfg, unlearn=dataclasses.replace(cfg.unlearn, seed=cfg.seed))
    m = run_unlearn(cfg, model, tokenizer)
    return {k: v for k, v in m.items() if k != "plots"}


def run_audit_job(cfg: AuditConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Run the attacks on `cfg.run` (RUN/audit.json, the curves on its page); the flat "knowledge recovered"
    summary with the run's site and method."""
    from .runner import audit_summary, run_audit

    res = run_audit(cfg, model, tokenizer)  # refuses an unfinished RUN before any model loads
    res.pop("_control", None)
    return {"audit": audit_summary(res), "site": res["site"], "method": res["method"]}
