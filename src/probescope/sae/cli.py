"""`probescope sae train | eval | latents`: the options are the config dataclasses' fields (`sae/run.py`); each
command calls one `run_sae_*` and prints a line."""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .run import SaeEvalConfig, SaeLatentsConfig, SaeTrainConfig

app = typer.Typer(help="Sparse autoencoders and transcoders: train, evaluate, label latents.", no_args_is_help=True)
console = Console(stderr=True)


def _site(cfg: Any) -> str:
    """The site the SAE (or transcoder) was asked to reconstruct, in the user's terms."""
    if cfg is None:
        return "its site"
    if getattr(cfg, "hook_in", None) and getattr(cfg, "hook_out", None):
        return f"{cfg.hook_out} from {cfg.hook_in} (a transcoder)"
    return f"the residual stream after block {cfg.layer}" if getattr(cfg, "layer", None) is not None else "its site"


def _num(v: Any, fmt: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def _show_train(m: dict, cfg: Any = None) -> None:
    """One sentence: what was reconstructed, how much of it the SAE leaves unexplained, how sparse, how fast."""
    if "rank" in m:  # another torchrun process: rank 0 reports
        return
    f = m.get("final", {})
    console.print(f"[green]sae[/green] trained on {m.get('tokens', 0):,} tokens of {_site(cfg)}: it leaves "
                  f"{_num(f.get('fvu'), '.0%')} of the variance unexplained (fvu {_num(f.get('fvu'))}) with "
                  f"{_num(f.get('l0'), '.1f')} latents active per token; {m['tokens_per_s_this_session']:,.0f} tok/s",
                  soft_wrap=True)


def _show_eval(res: dict) -> None:
    """The SAE's held-out scores in words: reconstruction, sparsity, dead latents, and what splicing it into the
    model costs the next-token loss (the share of the zero-ablation loss gap it recovers)."""
    console.print(f"[green]sae eval[/green] on {res.get('eval_tokens', 0):,} held-out tokens: fvu {_num(res.get('fvu'))} "
                  f"(share of variance unexplained), {_num(res.get('l0'), '.1f')} latents active per token, "
                  f"{_num(res.get('dead_frac'), '.0%')} never fire", soft_wrap=True)
    if res.get("loss_recovered") is not None:
        console.print(f"spliced into the model on {res.get('lm_tokens', 0):,} tokens: next-token loss "
                      f"{_num(res.get('loss_orig'))} → {_num(res.get('loss_sae'))} (zero ablation "
                      f"{_num(res.get('loss_zero'))}), so it keeps {_num(res['loss_recovered'], '.0%')} of what zeroing the "
                      "site would lose; "
                      f"KL {_num(res.get('kl'), '.3f')} nats per token", soft_wrap=True)


def _show_latents(s: dict) -> None:
    console.print(f"[green]latents[/green] {s['latents_file']}: {s['n_fired']} of {s['n_latents']} fired")


def _rank0_out(cfg: SaeTrainConfig, res: dict) -> str | None:
    return cfg.out if int(os.environ.get("RANK", "0")) == 0 else None


_RUN = f"{__package__}.run"
config_command(app, "train", SaeTrainConfig, lazy(_RUN, "run_sae_train"), show=_show_train, run_dir=_rank0_out)
config_command(app, "eval", SaeEvalConfig, lazy(_RUN, "run_sae_eval"), show=_show_eval, run_dir=lambda c, r: c.sae)
config_command(app, "latents", SaeLatentsConfig, lazy(_RUN, "run_sae_latents"), show=_show_latents,
               run_dir=lambda c, r: c.sae)
