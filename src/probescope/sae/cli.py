"""`probescope sae train | eval | latents`: thin over probescope.sae."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..clikit import JSON, QUIET, finish, job_output, run_job as _fail

app = typer.Typer(help="Sparse autoencoders and transcoders: train, evaluate, label latents.", no_args_is_help=True)
console = Console(stderr=True)


def _texts(data: str | None) -> list[str]:
    from ..core.data import default_corpus, read_texts

    return list(default_corpus()) if data in (None, "", "default") else read_texts(data)


@app.command("train")
def train_cmd(
    out: str = typer.Option("runs/sae", "--out", help="run folder (resumed if it holds a checkpoint)"),
    store: str = typer.Option(None, "--store", help="activation store folder (from `probescope cache`)"),
    model: str = typer.Option(None, "--model", help="capture on the fly from this model (with --data)"),
    data: str = typer.Option(None, "--data", help="texts for --model: JSONL/CSV/TXT; default: stdlib docstrings"),
    layer: int = typer.Option(None, "--layer", help="residual stream after this block (resid_post.L)"),
    hook_in: str = typer.Option(None, "--hook-in", help="hook point read, e.g. mlp_in.3 (transcoders)"),
    hook_out: str = typer.Option(None, "--hook-out", help="hook point predicted, e.g. mlp_out.3 (transcoders)"),
    arch: str = typer.Option("topk", "--arch", help="topk | batchtopk | jumprelu | relu"),
    k: int = typer.Option(32, "--k", help="active latents per token (target L0 for batchtopk/jumprelu)"),
    expansion: int = typer.Option(16, "--expansion"),
    n_latents: int = typer.Option(0, "--n-latents", help="overrides --expansion"),
    tokens: int = typer.Option(2_000_000, "--tokens"),
    batch_size: int = typer.Option(4096, "--batch-size", help="global batch, split across torchrun processes"),
    lr: float = typer.Option(0.0, "--lr", help="0: sparsify's rule, 5e-3/sqrt(M/2^14) (sign optimisers), 2e-4/... (adam)"),
    optimizer: str = typer.Option("sf-signum", "--optimizer", help="sf-signum (schedule-free sign-SGD) | signum | adam"),
    normalize_input: bool = typer.Option(False, "--normalize-input/--raw-input"),
    enc_init_scale: float = typer.Option(0.7, "--enc-init-scale", help="encoder = decoder transpose x this at init"),
    l1_coef: float = typer.Option(0.05, "--l1-coef"),
    l0_coef: float = typer.Option(0.01, "--l0-coef"),
    auxk_coef: float = typer.Option(1 / 32, "--auxk-coef"),
    dead_tokens: int = typer.Option(1_000_000, "--dead-tokens"),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="steps; 0: ~10 per run"),
    context_len: int = typer.Option(128, "--context-len"),
    dense: bool = typer.Option(False, "--dense", help="plain dense kernels instead of the sparse ones"),
    fast_select: str = typer.Option("auto", "--fast-select", help="bf16 top-k selection: auto | on | off"),
    threads: int = typer.Option(0, "--threads"),
    device: str = typer.Option("auto", "--device"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="--no-resume: start over in --out, replacing what is there"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Train an SAE (or transcoder) from a store or straight from a model; works under torchrun (DDP)."""
    from .config import TrainConfig
    from .train import sae_config_for, train_sae

    def run() -> Any:
        source = _source(store, model, data, layer, hook_in, hook_out, context_len, device)
        sae_cfg = sae_config_for(source, None, arch=arch, k=k, expansion=expansion, n_latents=n_latents,
                                 normalize_input=normalize_input, l1_coef=l1_coef, l0_coef=l0_coef,
                                 enc_init_scale=enc_init_scale)
        tcfg = TrainConfig(tokens=tokens, batch_size=batch_size, lr=lr, optimizer=optimizer, auxk_coef=auxk_coef,
                           dead_tokens=dead_tokens, seed=seed, checkpoint_every=checkpoint_every,
                           sparse_kernels=not dense, fast_select=fast_select, threads=threads, device=device)
        return train_sae(source, sae_cfg, tcfg, out, resume=resume, quiet=quiet or json_out)

    with job_output(quiet, json_out):
        _fail(run)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        m = json.loads((Path(out) / "metrics.json").read_text())
        f = m.get("final", {})
        finish(out, m, quiet, json_out, show=lambda: console.print(
            f"[green]sae[/green] {out}: fvu {f.get('fvu', float('nan')):.4f}, l0 {f.get('l0', float('nan')):.1f}, "
            f"{m['tokens_per_s_this_session']:,.0f} tok/s"))


def _source(store, model, data, layer, hook_in, hook_out, context_len, device):
    from .sources import ModelSource, StoreSource

    if store and model:
        raise ValueError("pass either --store or --model, not both")
    if store:
        if hook_in or hook_out:
            raise ValueError("a store holds residual layers only: use --layer, or --model for mlp hook points")
        return StoreSource(store, layer)
    if not model:
        raise ValueError("no activations: pass --store DIR, or --model NAME (with --data) to capture on the fly")
    from ..core.models.registry import load_model

    lm, tok = load_model(model, device=device)
    hin = hook_in or (f"resid_post.{layer}" if layer is not None else None)
    if hin is None:
        raise ValueError("which hook point? pass --layer L (residual stream) or --hook-in/--hook-out")
    return ModelSource(lm, tok, _texts(data), hin, hook_out or hin, context_len=context_len)


@app.command("eval")
def eval_cmd(
    sae: str = typer.Option(..., "--sae", help="SAE folder (probescope run, SAELens or sparsify layout)"),
    model: str = typer.Option(None, "--model", help="default: the model named in the SAE's config"),
    data: str = typer.Option(None, "--data"),
    contexts: int = typer.Option(32, "--contexts", help="contexts for the LM-loss metrics"),
    context_len: int = typer.Option(128, "--context-len"),
    tokens: int = typer.Option(65536, "--tokens", help="tokens for FVU, L0 and dead fraction"),
    hook: str = typer.Option(None, "--hook", help="refuse an SAE trained elsewhere than this hook point"),
    device: str = typer.Option("auto", "--device"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """FVU, L0, dead fraction, LM loss recovered and KL with the SAE spliced into the model.

    The figures land in SAE/eval.json and on SAE/report.html."""

    def run() -> dict:
        from ..core.io import atomic_write_json
        from ..core.models.registry import load_model
        from ..core.store import make_contexts
        from .evaluate import evaluate_sae
        from .formats import load_sae
        from .sources import ModelSource

        s = load_sae(sae, hook=hook)
        name = model or s.cfg.model
        if not name:
            raise ValueError(f"the SAE in {sae} names no model: pass --model")
        lm, tok = load_model(name, device=device)
        s = s.to(next(lm.parameters()).device)
        texts = _texts(data)
        src = ModelSource(lm, tok, texts, s.cfg.hook_in, s.cfg.hook_out, context_len=context_len)
        if src.d_in != s.cfg.d_in:
            raise ValueError(f"the SAE reads width {s.cfg.d_in}, but {s.cfg.hook_in} of {name} has width {src.d_in}")
        ids = make_contexts(tok, texts, context_len, max_contexts=contexts)
        res = evaluate_sae(s, src, model=lm, input_ids=ids, tokens=tokens, batch_size=min(4096, tokens))
        atomic_write_json(Path(sae) / "eval.json", res)
        return res

    with job_output(quiet, json_out):
        res = _fail(run)

    def show() -> None:
        for k_, v in res.items():
            console.print(f"{k_:>16} {v:.4f}" if isinstance(v, float) else f"{k_:>16} {v}")

    finish(sae, res, quiet, json_out, show)


@app.command("latents")
def latents_cmd(
    sae: str = typer.Option(..., "--sae"),
    model: str = typer.Option(None, "--model"),
    data: str = typer.Option(None, "--data"),
    contexts: int = typer.Option(64, "--contexts"),
    context_len: int = typer.Option(64, "--context-len"),
    top_n: int = typer.Option(8, "--top-n"),
    device: str = typer.Option("auto", "--device"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Top-activating contexts, frequency and a short label per latent: SAE/latents.json and cards on SAE/report.html."""

    def run() -> Path:
        from ..core.models.registry import load_model
        from ..core.store import make_contexts
        from .formats import load_sae
        from .latents import latent_stats, save_latent_stats

        s = load_sae(sae)
        name = model or s.cfg.model
        if not name:
            raise ValueError(f"the SAE in {sae} names no model: pass --model")
        lm, tok = load_model(name, device=device)
        s = s.to(next(lm.parameters()).device)
        ids = make_contexts(tok, _texts(data), context_len, max_contexts=contexts)
        stats = latent_stats(s, lm, tok, ids, top_n=top_n)
        save_latent_stats(stats, sae)
        return stats

    with job_output(quiet, json_out):
        stats = _fail(run)
    lat = stats["latents"]
    summary = {"latents_file": str(Path(sae) / "latents.json"), "n_latents": len(lat),
               "n_fired": sum(1 for r in lat.values() if r.get("top_contexts")),
               "labels": {j: r["label"] for j, r in lat.items()}}
    finish(sae, summary, quiet, json_out, show=lambda: console.print(
        f"[green]latents[/green] {summary['latents_file']}: {summary['n_fired']} of {summary['n_latents']} fired"))
