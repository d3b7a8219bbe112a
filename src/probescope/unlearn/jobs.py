"""The unlearning wing's CLI jobs: `UnlearnJob` (`probescope unlearn [run]`) and `AuditJob` (`probescope unlearn
audit RUN`), one dataclass each whose fields are the options (`clikit.config_command` flattens the nested
`UnlearnRun` / `UnlearnConfig` / `AuditConfig`), and one `run_*_job` each taking only its job.

The Python API is unchanged: `run_unlearn(UnlearnRun(...))` and `run_audit(AuditConfig(...))` do the work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .runner import AuditConfig, UnlearnRun
from .train import _opt


@dataclass
class UnlearnJob:
    """Unlearn a topic (default: country capitals on SmolLM2-135M) and score forget/retain/utility before and after."""

    run: UnlearnRun = field(default_factory=UnlearnRun)
    resume: bool = _opt(True, "resume from the checkpoint in --out (--no-resume: start over there)",
                        flag="--resume/--no-resume")
    quiet: bool = field(default=False, metadata={"cli": False})  # set from --quiet / --json

    @property
    def out(self) -> str:
        return self.run.out


def unlearn_run_of(job: UnlearnJob) -> UnlearnRun:
    """The run the job describes: its one seed seeds the subject and training; threads 0 leaves torch's setting."""
    u = dataclasses.replace(job.run.unlearn, seed=job.run.seed, threads=job.run.unlearn.threads or None)
    return dataclasses.replace(job.run, unlearn=u)


def run_unlearn_job(job: UnlearnJob) -> dict[str, Any]:
    """Score before, unlearn, score after, into `job.out`; the metrics (without the plot specs)."""
    from .runner import run_unlearn

    cfg = unlearn_run_of(job)
    cfg.unlearn.validate()  # a bad --method, --steps or --lr is refused before the model is loaded
    m = run_unlearn(cfg, quiet=job.quiet, resume=job.resume)
    return {k: v for k, v in m.items() if k != "plots"}


@dataclass
class AuditJob:
    """Relearning, per-layer probes and direction removal on RUN, each reported as "knowledge recovered"."""

    audit: AuditConfig = field(default_factory=AuditConfig)
    quiet: bool = field(default=False, metadata={"cli": False})  # set from --quiet / --json


def run_audit_job(job: AuditJob) -> dict[str, Any]:
    """Run the attacks on `job.audit.run` (RUN/audit.json, the curves on its page); the flat "knowledge recovered"
    summary with the run's site and method."""
    from .runner import ATTACKS, audit_summary, run_audit

    a = job.audit
    a = dataclasses.replace(a, attacks=tuple(a.attacks), steps=tuple(a.steps or (5, 20, 100)),
                            spans=tuple(a.spans or (1,)), threads=a.threads or None)
    if not a.attacks:
        raise ValueError(f"no attack given: use any of {', '.join(ATTACKS)}")
    res = run_audit(a, quiet=job.quiet)  # refuses an unknown attack or an unfinished RUN before any model loads
    res.pop("_control", None)
    return {"audit": audit_summary(res), "site": res["site"], "method": res["method"]}
