"""`probescope circuit transcoders | labels | attribute | intervene`: options are the config dataclasses' fields (`circuits/config.py`)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from ..clikit import config_command, lazy
from . import report as _report  # noqa: F401  (registers the graph page section)
from .config import AttributeConfig, InterveneConfig, LabelsConfig, TranscodersConfig

app = typer.Typer(help="Circuit tracing: per-layer transcoders and attribution graphs.", no_args_is_help=True)
console = Console(stderr=True)


def _show_graph(r: dict) -> None:
    """The graph in one sentence (`report.graph_sentence`: the same words as the page's)."""
    console.print(f"{escape(_report.graph_sentence(r))} ({r['seconds']:.1f} s)", soft_wrap=True)


def _show_tc(r: dict) -> None:
    """What was trained and how well it stands in for the MLPs: unexplained variance, and the model's top next token
    with every transcoder spliced in (a share of the held-out tokens, with its 95% Wilson interval). Under torchrun
    only rank 0 reports (the other ranks trained their layers and handed them over)."""
    from ..core.stats import wilson

    if "rank" in r:
        return

    n = int(r.get("eval_tokens") or 0)
    ci = ""
    if n:
        lo, hi = wilson(round(r["agreement"] * n), n)
        ci = f" [{lo:.0%}, {hi:.0%}]"
    console.print(f"[green]transcoders[/green] for the MLPs of {r['n_layers']} layers of {r.get('model', 'the model')}, "
                  f"trained on {r.get('tokens', 0):,} tokens: they leave {r['mean_fvu']:.0%} of an MLP output's variance "
                  f"unexplained on average (fvu {r['mean_fvu']:.2f}); with all of them in place the model's top next "
                  f"token stays the same on {r['agreement']:.0%}{ci} of {n} held-out tokens (KL {r['kl']:.3f} "
                  "nats/token)", soft_wrap=True)


def _show_iv(r: dict) -> None:
    """Each intervention setting: how far the top logit moved and the new top tokens; then the edge check's sentence."""
    for m, e in r.get("effects", {}).items():
        console.print(f"[green]{m}[/green] the top logit moves {e['top_logit_change']:+.2f}; the top tokens after: "
                      + escape(", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in e["after"][:3])), soft_wrap=True)
    ec = r.get("edge_check")
    if ec:
        console.print(escape(_report.edges_sentence(ec)), soft_wrap=True)


def _show_labels(r: dict) -> None:
    console.print(f"[green]labels[/green] for {r['n_layers']} layers from {r['contexts']} contexts; latents that fired "
                  f"per layer: {min(r['fired_per_layer'])} to {max(r['fired_per_layer'])} of {r['n_latents']}")


_RUN = f"{__package__}.run"
config_command(app, "attribute", AttributeConfig, lazy(_RUN, "run_circuit_attribute"), show=_show_graph,
               kind="circuit-graph")
config_command(app, "transcoders", TranscodersConfig, lazy(_RUN, "run_circuit_transcoders"), show=_show_tc,
               kind="circuit-transcoders", run_dir=lambda c, r: None if "rank" in r else c.out)
config_command(app, "labels", LabelsConfig, lazy(_RUN, "run_circuit_labels"), show=_show_labels)
config_command(app, "intervene", InterveneConfig, lazy(_RUN, "run_circuit_intervene"), show=_show_iv,
               kind="circuit-intervene")
