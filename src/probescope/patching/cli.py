"""`probescope patch`: options are PatchConfig's fields; the command calls `run_patching`."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from ..clikit import config_command
from .run import PatchConfig, run_patching

console = Console(stderr=True)


def _num(x: Any, fmt: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and x != x) else format(x, fmt)


def _cell(fam: str, top: dict) -> str:
    col = str(top["col"])
    where = f"head {col.lstrip('H')}" if fam == "attn_head" else f"position {col}" if col.isdigit() else col or "the whole layer"
    return f"layer {str(top['row']).lstrip('L')}, {where}"


def _show(res: dict, cfg: Any = None) -> None:
    """What was patched and on what, then per family the cell that matters most (as a share of the clean −
    corrupted gap it restores) and, with both methods, how well attribution ranks the cells exact patching finds."""
    task = getattr(cfg, "task", None)
    rows = res["families"]
    first = next((r for r in rows.values() if "clean_metric" in r), None)
    gap = (f" (logit of the answer minus the wrong token: clean {_num(first['clean_metric'])}, corrupted "
           f"{_num(first['corrupt_metric'])})") if first else " (logit of the answer minus the wrong token)"
    console.print(f"Patched {res['n_prompts']} clean/corrupted pairs of {task or 'the task'} on {res['model']}{gap}; "
                  "an effect of 1 restores the whole gap, a negative one widens it.", soft_wrap=True)
    for fam, row in rows.items():
        parts = []
        if "top_cell" in row:
            top = row["top_cell"]
            share = f"restores {_num(top['effect'], '.0%')} of the gap" if top["effect"] >= 0 else \
                f"widens the gap by {_num(-top['effect'], '.0%')}"
            parts.append(f"the largest effect is at {_cell(fam, top)}: {_num(top['effect'], '+.2f')} "
                         f"({share}; exact patching, {row['exact_forwards']} "
                         f"forwards, {_num(row['exact_seconds'], '.1f')} s)")
        if "agreement" in row:
            a = row["agreement"]
            fast = f", {_num(row['speedup'], '.1f')}× faster" if row.get("speedup") else ""
            parts.append(f"attribution patching agrees with it at Pearson r {_num(a.get('pearson'))}{fast}")
        elif "attribution_seconds" in row:
            parts.append(f"attribution patching (first-order) in {_num(row['attribution_seconds'], '.2f')} s")
        console.print(f"[bold]{fam}[/bold]: " + "; ".join(parts), soft_wrap=True)


def register(app) -> None:
    """Mount `patch` on the root app."""
    config_command(app, "patch", PatchConfig, run_patching, show=_show, kind="patching")
