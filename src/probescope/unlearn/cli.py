"""`probescope unlearn [run]`, `probescope unlearn audit RUN` and `probescope unlearn organism`: the options are the job dataclasses' fields
(`unlearn/jobs.py`); each command calls one `run_*_job` of the wing and prints its lines."""

from __future__ import annotations

import inspect
from typing import Any

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .jobs import AuditJob, UnlearnJob
from .organism import EntityOrganismConfig

app = typer.Typer(help="Unlearning (RMU, rmu-adv, gradient ascent, NPO) and the attacks that show whether the model "
                       "really forgot.", invoke_without_command=True)
console = Console(stderr=True)


def _show(m: dict) -> None:
    b, a = m["before"], m["after"]
    console.print(f"[green]unlearn[/green] {m['method']} at {m['site']}: forget {b['forget']['acc']:.2f} → "
                  f"{a['forget']['acc']:.2f} (chance {a['forget']['chance']:.2f})"
                  + (f", retain {b['retain']['acc']:.2f} → {a['retain']['acc']:.2f}" if "retain" in a else "")
                  + (f", perplexity {b['utility']['ppl']:.1f} → {a['utility']['ppl']:.1f}" if "utility" in a else ""))


def _show_audit(res: dict) -> None:
    for k, v in res["audit"].items():
        console.print(f"{k}: recovered {v['recovered']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]" if isinstance(v, dict)
                      else f"{k}: {v:.2f}")


run_cmd = config_command(app, "run", UnlearnJob, lazy(f"{__package__}.jobs", "run_unlearn_job"), show=_show, kind="unlearn")
audit_cmd = config_command(app, "audit", AuditJob, lazy(f"{__package__}.jobs", "run_audit_job"), show=_show_audit,
                           run_dir=lambda job, res: job.audit.run)


def _show_organism(m: dict) -> None:
    b, a = m["before"], m["after"]
    console.print(f"[green]organism[/green] {m['n_facts']} facts of {m['n_entities']} entities: recall {b['acc']:.2f} "
                  f"→ {a['acc']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] in {m['training']['epochs_run']} epochs; "
                  f"perplexity {b['utility']['ppl']:.1f} → {a['utility']['ppl']:.1f}; "
                  f"forget {m['n_forget_facts']} facts, retain {m['n_retain_facts']}")
    console.print(f"next: {m['unlearn_command']}")


organism_cmd = config_command(app, "organism", EntityOrganismConfig,
                              lazy(f"{__package__}.organism", "run_entity_organism"), show=_show_organism,
                              kind="unlearn-organism")


def _default(ctx: typer.Context, **kw: Any) -> None:
    """`probescope unlearn` with no subcommand is `probescope unlearn run`."""
    if ctx.invoked_subcommand is None:
        run_cmd(**kw)


_sig = inspect.signature(run_cmd)
_default.__signature__ = _sig.replace(parameters=[  # type: ignore[attr-defined]
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    *_sig.parameters.values()])
_default.__annotations__ = {"ctx": typer.Context, **run_cmd.__annotations__}
_default.__doc__ = run_cmd.__doc__
app.callback(invoke_without_command=True)(_default)
