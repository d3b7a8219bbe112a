"""`probescope curvature organism | fit | edit | eval`: the options are the config dataclasses' fields
(`curvature/config.py`); each command calls one `run_*` of the wing (`curvature/runner.py`) and prints its lines."""

from __future__ import annotations


import typer
from rich.console import Console

from ..clikit import config_command, lazy
from . import report as _report  # noqa: F401  (registers the report sections)
from .config import EditConfig, EvalConfig, FitConfig, OrganismConfig

app = typer.Typer(help="Loss-curvature (K-FAC) edits that remove memorizing weights.", no_args_is_help=True)
console = Console(stderr=True)


def _show_organism(m: dict) -> None:
    b, o = m["base"], m["organism"]
    console.print(f"[green]organism[/green] canary recall {b['recall']:.2f} → {o['recall']:.2f}, "
                  f"skill {b['skill']:.2f} → {o['skill']:.2f}, ppl {b['ppl']:.2f} → {o['ppl']:.2f}")
    if m.get("warning"):
        console.print(f"[yellow]warning:[/yellow] {m['warning']}", soft_wrap=True)


def _show_fit(m: dict) -> None:
    console.print(f"[green]factors[/green] {m['factors']}: {len(m['matrices'])} matrices, {m['n_tokens']:,} tokens, "
                  f"{m['fisher']} Fisher, {m['factor_bytes'] / 2**20:.1f} MiB")


def _show_edit(m: dict) -> None:
    """The setting as given (ρ, the share of curvature mass kept, or a kept share / top-k for the baselines), what it
    keeps of the components, and where the edit is."""
    if m.get("top_k") is not None:
        setting = f"top {m['top_k']} components per matrix"
    elif m["method"].startswith("kfac") or m["method"] == "curvature":
        setting = f"ρ = {m['keep']:g} of the curvature mass"
    else:
        setting = f"keep {m['keep']:g}"
    console.print(f"[green]edit[/green] {m['method']} on {m.get('model', 'the model')} with {setting}: it keeps "
                  f"{m['kept_share_params']:.1%} of the components of {len(m.get('per_matrix', {})) or 'the'} matrices; "
                  f"saved in {m['edit']}", soft_wrap=True)


def _ci(r: dict, key: str, fmt: str = ".2f") -> str:
    ci = r.get(f"{key}_ci")
    v = format(r[key], fmt)
    return f"{v} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci and len(ci) == 2 else v


def _show_eval(m: dict) -> None:
    """Per edit: the setting as given (ρ for the curvature edit, the kept share for the baselines) and what it keeps
    of the parameters, then canary recall, perplexity and skill with their 95% intervals."""
    b = m["base"]
    console.print(f"organism: canary recall {_ci(b, 'recall')}, perplexity {_ci(b, 'ppl', '.1f')}, "
                  f"skill {_ci(b, 'skill')}", soft_wrap=True)
    for r in m["rows"]:
        setting = f"ρ = {r['keep']:g}" if r["method"].startswith("kfac") or r["method"] == "curvature" else \
            f"keep {r['keep']:g}"
        share = f", {r['kept_share_params']:.1%} of the parameters kept" if "kept_share_params" in r else ""
        console.print(f"{r['method']:>10} {setting}{share}: canary recall {_ci(r, 'recall')}, perplexity "
                      f"{_ci(r, 'ppl', '.1f')}, skill {_ci(r, 'skill')}", soft_wrap=True)


_RUN = f"{__package__}.runner"
config_command(app, "organism", OrganismConfig, lazy(_RUN, "run_organism"), show=_show_organism,
               kind="curvature-organism")
config_command(app, "fit", FitConfig, lazy(_RUN, "run_fit"), show=_show_fit, kind="curvature-fit", resumes=True)
config_command(app, "edit", EditConfig, lazy(_RUN, "run_edit"), show=_show_edit, kind="curvature-edit")
config_command(app, "eval", EvalConfig, lazy(_RUN, "run_eval"), show=_show_eval, kind="curvature-eval")
