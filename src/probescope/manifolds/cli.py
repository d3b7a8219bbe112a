"""`probescope manifold find | move`: the options are FindConfig's / MoveConfig's fields; each calls one run_*."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from ..clikit import config_command
from . import report as _report  # noqa: F401  (registers the report sections)
from .config import ClustersConfig, FindConfig, LineBreakConfig, MoveConfig, TransformConfig
from .run import run_find, run_linebreak, run_move, run_transform
from .sae_clusters import run_clusters

app = typer.Typer(help="Concept manifolds: the shape a concept takes per layer, and moving along it.",
                  no_args_is_help=True)
console = Console(stderr=True)


def _show_find(r: dict) -> None:
    """The find run in one paragraph (`report.find_sentence`: the same words as the page's headline)."""
    console.print(escape(_report.find_sentence(r)), soft_wrap=True)


def _show_move(r: dict) -> None:
    """The move run in one sentence (`report.move_sentence`), then the other edits at the best layers."""
    console.print(escape(_report.move_sentence(r)), soft_wrap=True)
    there = r["best"].get("at_best_layers") or {}
    if there:
        console.print("other edits at those layers: " + ", ".join(f"{k} {v:.0%}" for k, v in there.items()),
                      soft_wrap=True)


def _show_clusters(r: dict) -> None:
    console.print(f"[green]{r['model']} {r['site']}[/green] {r['method']}: {r['n_clusters']} clusters of "
                  f"{r['n_latents']} latents on {r['n_tokens']} tokens — {r['verdict']}")
    for c in r["clusters"][:10]:
        r2 = "—" if c["circle_r2"] is None else (f"{c['circle_r2']:.2f} (permuted p95 {c['order_permuted_p95']:.2f}, "
                                                 f"random p95 {c['random_cluster_p95']:.2f})")
        console.print(f"  {c['size']} latents cos {c['mean_cosine']:.2f}, circle R² {r2}: "
                      + ", ".join((c["labels"] or [str(j) for j in c["latents"]])[:6]))


config_command(app, "find", FindConfig, run_find, show=_show_find, kind="manifold-find")
config_command(app, "move", MoveConfig, run_move, show=_show_move, kind="manifold-move")
def _show_transform(r: dict) -> None:
    console.print(f"[green]{r['task']}[/green] {r['verdict']}")
    for c in r["top"][:5]:
        console.print(f"  {c['site']}: {c['effect']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}] — {c['verdict']}")


config_command(app, "transform", TransformConfig, run_transform, show=_show_transform, kind="manifold-transform")
def _show_linebreak(r: dict) -> None:
    console.print(escape(r["verdict"]), soft_wrap=True)
    for c in r["top"][:5]:
        extra = (f"; {c['newline_attention']:.0%} of its attention on newlines (layer mean "
                 f"{c['layer_mean_attention']:.0%})" if "newline_attention" in c else "")
        console.print(f"  {c['site']}: {c['effect']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]; read-out R² count "
                      f"{c['carries']['count']['probe']:.2f}, width {c['carries']['width']['probe']:.2f}, width − count "
                      f"{c['carries']['remaining']['probe']:.2f}" + extra, soft_wrap=True)


config_command(app, "linebreak", LineBreakConfig, run_linebreak, show=_show_linebreak, kind="manifold-linebreak")
config_command(app, "clusters", ClustersConfig, run_clusters, show=_show_clusters, kind="manifold-clusters")
