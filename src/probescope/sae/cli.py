"""`probescope sae train | eval | latents`: the options are the config dataclasses' fields (`sae/run.py`); each
command calls one `run_sae_*` and prints a line."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .run import SaeEvalConfig, SaeLatentsConfig, SaeTrainConfig

app = typer.Typer(help="Sparse autoencoders and transcoders: train, evaluate, label latents.", no_args_is_help=True)
console = Console(stderr=True)


def _show_train(m: dict) -> None:
    if "rank" in m:  # another torchrun process: rank 0 reports
        return
    f = m.get("final", {})
    console.print(f"[green]sae[/green] fvu {f.get('fvu', float('nan')):.4f}, l0 {f.get('l0', float('nan')):.1f}, "
                  f"{m['tokens_per_s_this_session']:,.0f} tok/s")


def _show_eval(res: dict) -> None:
    for k, v in res.items():
        console.print(f"{k:>16} {v:.4f}" if isinstance(v, float) else f"{k:>16} {v}")


def _show_latents(s: dict) -> None:
    console.print(f"[green]latents[/green] {s['latents_file']}: {s['n_fired']} of {s['n_latents']} fired")


def _rank0_out(cfg: SaeTrainConfig, res: dict) -> str | None:
    return cfg.out if int(os.environ.get("RANK", "0")) == 0 else None


_RUN = f"{__package__}.run"
config_command(app, "train", SaeTrainConfig, lazy(_RUN, "run_sae_train"), show=_show_train, run_dir=_rank0_out)
config_command(app, "eval", SaeEvalConfig, lazy(_RUN, "run_sae_eval"), show=_show_eval, run_dir=lambda c, r: c.sae)
config_command(app, "latents", SaeLatentsConfig, lazy(_RUN, "run_sae_latents"), show=_show_latents,
               run_dir=lambda c, r: c.sae)
