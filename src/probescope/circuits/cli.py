"""`probescope circuit transcoders | labels | attribute | intervene`: options are the config dataclasses' fields (`circuits/config.py`)."""

from __future__ import annotations

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from . import report as _report  # noqa: F401  (registers the graph page section)
from .config import AttributeConfig, InterveneConfig, LabelsConfig, TranscodersConfig

app = typer.Typer(help="Circuit tracing: per-layer transcoders and attribution graphs.", no_args_is_help=True)
console = Console(stderr=True)


def _show_graph(r: dict) -> None:
    console.print(f"[green]graph[/green] {r['n_feature_nodes']} feature nodes, top logit {r['top_logit']!r} "
                  f"(p={r['top_logit_prob']:.2f}); replacement {r['replacement']:.3f}, completeness "
                  f"{r['completeness']:.3f} (pruned {r['pruned_replacement']:.3f} / {r['pruned_completeness']:.3f}, "
                  f"{r['pruned_nodes']} nodes, {r['pruned_edges']} edges); {r['seconds']:.1f} s")


def _show_tc(r: dict) -> None:
    console.print(f"[green]transcoders[/green] {r['n_layers']} layers, mean fvu {r['mean_fvu']:.3f}, "
                  f"agreement {r['agreement']:.3f}, KL {r['kl']:.3f}")


def _show_iv(r: dict) -> None:
    for m, e in r.get("effects", {}).items():
        console.print(f"[green]{m}[/green] top-logit change {e['top_logit_change']:+.3f}; after: "
                      + ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in e["after"][:3]))
    ec = r.get("edge_check")
    if ec:
        console.print(f"[green]edges[/green] top {len(ec['edges'])} feature edges into {ec['top_logit']!r}: " + "; ".join(
            f"{m} sign {s['sign_agreement']:.2f} r {s['pearson']:.2f}" for m, s in ec["summary"].items()))


def _show_labels(r: dict) -> None:
    console.print(f"[green]labels[/green] {r['n_layers']} layers from {r['contexts']} contexts; latents fired per "
                  f"layer: min {min(r['fired_per_layer'])}, max {max(r['fired_per_layer'])} of {r['n_latents']}")


_RUN = f"{__package__}.run"
config_command(app, "attribute", AttributeConfig, lazy(_RUN, "run_circuit_attribute"), show=_show_graph,
               kind="circuit-graph")
config_command(app, "transcoders", TranscodersConfig, lazy(_RUN, "run_circuit_transcoders"), show=_show_tc,
               kind="circuit-transcoders")
config_command(app, "labels", LabelsConfig, lazy(_RUN, "run_circuit_labels"), show=_show_labels)
config_command(app, "intervene", InterveneConfig, lazy(_RUN, "run_circuit_intervene"), show=_show_iv,
               kind="circuit-intervene")
