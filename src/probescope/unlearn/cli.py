"""`probescope unlearn [run]`, `probescope unlearn audit RUN` and `probescope unlearn organism`: the options are the
config dataclasses' fields (`UnlearnRunConfig`, `AuditConfig`, `EntityOrganismConfig`); each command calls one run
function of the wing and prints its lines."""

from __future__ import annotations

import inspect
from typing import Any

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .organism import EntityOrganismConfig
from .runner import AuditConfig, UnlearnRunConfig

app = typer.Typer(help="Unlearning (RMU, rmu-adv, gradient ascent, NPO) and the attacks that show whether the model "
                       "really forgot.", invoke_without_command=True)
console = Console(stderr=True)


def _ci(d: dict) -> str:
    return f" [{d['lo']:.2f}, {d['hi']:.2f}]" if d.get("lo") is not None and d.get("hi") is not None else ""


def _names(facts: list[str], most: int = 4) -> str:
    shown = "; ".join(facts[:most])
    return shown + (f"; … {len(facts) - most} more (metrics.json: facts)" if len(facts) > most else "")


def _show(m: dict) -> None:
    """What was asked, what came out, whether the goals hold — and which facts went, by name."""
    b, a = m["before"], m["after"]
    console.print(f"[green]unlearn[/green] {m['method']} at {m['site']}: held-out forget facts {b['forget']['acc']:.2f} "
                  f"→ {a['forget']['acc']:.2f}{_ci(a['forget'])} (chance {a['forget']['chance']:.2f})"
                  + (f", retain {b['retain']['acc']:.2f} → {a['retain']['acc']:.2f}{_ci(a['retain'])}" if "retain" in a
                     else "")
                  + (f", perplexity {b['utility']['ppl']:.1f} → {a['utility']['ppl']:.1f}" if "utility" in a else ""),
                  soft_wrap=True)
    f = m.get("facts") or {}
    known = len(f.get("forgotten", [])) + len(f.get("kept", []))
    if known:
        console.print(f"forgotten {len(f['forgotten'])} of the {known} it knew: {_names(f['forgotten']) or 'none'}",
                      soft_wrap=True)
        if f.get("kept"):
            console.print(f"still known: {_names(f['kept'])}", soft_wrap=True)
    if f.get("retain_lost"):
        console.print(f"[yellow]retain facts lost[/yellow] ({len(f['retain_lost'])}): {_names(f['retain_lost'])}",
                      soft_wrap=True)
    goals = m.get("goals", {})
    if goals:
        console.print("goals: " + ", ".join(f"{k.replace('_', ' ')} {'yes' if v else 'NO'}" for k, v in goals.items()),
                      soft_wrap=True)


def _attack(key: str) -> str:
    """An audit key in words: 'relearn_half_forget_5' → 'relearning on half the forget facts, 5 steps'."""
    import re

    m = re.fullmatch(r"relearn_(half_forget|unrelated)_(\d+)", key)
    if m:
        on = "half the forget facts (scored on the other half)" if m[1] == "half_forget" else "unrelated text"
        return f"relearning on {on}, {m[2]} steps"
    m = re.fullmatch(r"direction_(\w+)_k(\d+)", key)
    if m:
        return (f"projecting out the unlearning direction (found on the {'training' if m[1] == 'train' else m[1]} facts) at {m[2]} "
                f"layer{'s' if m[2] != '1' else ''}")
    return key.replace("_", " ")


def _show_audit(res: dict) -> None:
    """Each attack in words: knowledge recovered (the share of the lost forget accuracy that came back) with its
    interval, the attacked accuracy beside its control; then the truth probe before and after, and the largest
    recovery."""
    audit = res["audit"]
    worst = None
    for k, v in audit.items():
        if not isinstance(v, dict):
            continue
        extra = ""
        if v.get("acc") is not None:
            extra += f"; forget accuracy after the attack {v['acc']:.2f}"
        if v.get("control_acc") is not None:
            extra += f" (the same attack on the base model: {v['control_acc']:.2f})"
        console.print(f"{_attack(k)}: knowledge recovered {v['recovered']:.2f}{_ci(v)}{extra}", soft_wrap=True)
        if v.get("recovered") is not None and (worst is None or v["recovered"] > audit[worst]["recovered"]):
            worst = k
    if "probe_max_before" in audit:
        console.print(f"a linear truth probe reads the facts with accuracy up to {audit['probe_max_before']:.2f} "
                      f"before unlearning and {audit.get('probe_max_after', float('nan')):.2f} after (best layer)",
                      soft_wrap=True)
    if worst is not None:
        w = audit[worst]
        console.print(f"knowledge recovered is the share of the forget accuracy lost to unlearning that an attack "
                      f"brings back (0: none, 1: all); the most is {w['recovered']:.2f}{_ci(w)}, by {_attack(worst)}",
                      soft_wrap=True)


run_cmd = config_command(app, "run", UnlearnRunConfig, lazy(f"{__package__}.jobs", "run_unlearn_job"), show=_show,
                         kind="unlearn")
audit_cmd = config_command(app, "audit", AuditConfig, lazy(f"{__package__}.jobs", "run_audit_job"), show=_show_audit,
                           run_dir=lambda cfg, res: cfg.run)


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
