"""`probescope patch`: options are PatchConfig's fields; the command calls `run_patching`."""

from __future__ import annotations

from rich.console import Console

from ..clikit import config_command
from .run import PatchConfig, run_patching

console = Console(stderr=True)


def _show(res: dict) -> None:
    for fam, row in res["families"].items():
        line = f"[bold]{fam}[/bold]"
        if "exact_seconds" in row:
            top = row["top_cell"]
            line += f"  exact {row['exact_seconds']:.1f} s ({row['exact_forwards']} forwards), top {top['row']}/{top['col']} {top['effect']:+.2f}"
        if "attribution_seconds" in row:
            line += f"  attribution {row['attribution_seconds']:.2f} s"
        if "agreement" in row:
            a = row["agreement"]
            line += f"  r={a['pearson']:.2f}  speed-up {row['speedup']:.0f}x"
        console.print(line)


def register(app) -> None:
    """Mount `patch` on the root app."""
    config_command(app, "patch", PatchConfig, run_patching, show=_show, kind="patching")
