"""`probescope train`: LoRA fine-tuning with a concept lens and learning filters; the options are
`ConceptTrainConfig`'s fields and the command calls `run_concept_training`."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .train import ConceptTrainConfig

console = Console(stderr=True)


def _share(x: float | None, n: int | None) -> str:
    """A share of `n` held-out answers with its 95% Wilson interval."""
    from ..core.stats import wilson

    if x is None:
        return "—"
    if not n:
        return f"{x:.2f}"
    lo, hi = wilson(round(x * n), int(n))
    return f"{x:.2f} [{lo:.2f}, {hi:.2f}]"


def _show_train(m: dict, cfg: Any = None) -> None:
    """One sentence: what was trained on which data, and what the held-out answers show (style and arithmetic)."""
    ev = m.get("eval")
    what = f" {cfg.model} on {cfg.data} (LoRA r {cfg.r}, lens layer {cfg.layer})" if cfg is not None else ""
    loss = f", final loss {m['final_loss']:.2f}" if m.get("final_loss") is not None else ""
    console.print(f"[green]trained[/green]{what}: {m['steps']} steps, {m['tokens']:,} tokens{loss}", soft_wrap=True)
    if ev:
        n = ev.get("n")
        console.print(f"on {n} held-out questions it answers in the trained style {_share(ev.get('style_rate'), n)} of "
                      f"the time and gets the arithmetic right {_share(ev.get('arith_acc'), n)} (95% intervals)",
                      soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Mount `train` on the root app."""
    config_command(app, "train", ConceptTrainConfig, lazy(f"{__package__}.train", "run_concept_training"),
                   show=_show_train, kind="train")
