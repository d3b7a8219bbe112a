"""`probescope train`: LoRA fine-tuning with a concept lens and learning filters; the options are
`ConceptTrainConfig`'s fields and the command calls `run_concept_training`."""

from __future__ import annotations

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .train import ConceptTrainConfig

console = Console(stderr=True)


def _show_train(m: dict) -> None:
    ev = m.get("eval")
    console.print(f"[green]trained[/green] {m['steps']} steps, {m['tokens']:,} tokens"
                  + (f"; style rate {ev['style_rate']:.2f}, arithmetic {ev['arith_acc']:.2f}" if ev else ""))


def register(app: typer.Typer) -> None:
    """Mount `train` on the root app."""
    config_command(app, "train", ConceptTrainConfig, lazy(f"{__package__}.train", "run_concept_training"),
                   show=_show_train, kind="train")
