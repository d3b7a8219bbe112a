"""The SAE wing's jobs: `run_sae_train`, `run_sae_eval`, `run_sae_latents`, each from one config dataclass whose
fields are the CLI's options (`probescope sae train | eval | latents`); the model, device, seed and threads options
come from the shared groups (`core/options.py`; train's seed, threads and device sit in its `TrainConfig`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.options import CorpusOptions, DeviceOptions, SourceModelOptions
from ..core.options import option as _opt
from .config import TrainConfig

_SAE_HINT = "pass --sae FOLDER (a probescope run, SAELens or sparsify layout)"


@dataclass
class SaeTrainConfig(SourceModelOptions, CorpusOptions):
    """Train an SAE (or transcoder) from a store or straight from a model; works under torchrun (DDP).
    `--model` captures on the fly from that model (with `--data`); without it, `--store` is read."""

    out: str = _opt("runs/sae", "run folder (resumed if it holds a checkpoint)")
    store: str | None = _opt(None, "activation store folder (from `probescope cache`)")
    layer: int | None = _opt(None, "residual stream after this block (resid_post.L)")
    hook_in: str | None = _opt(None, "site read, e.g. mlp_in.3 (transcoders)")
    hook_out: str | None = _opt(None, "site predicted, e.g. mlp_out.3 (transcoders)")
    context_len: int = _opt(128, "tokens per context when capturing from --model", min=1)
    arch: str = _opt("topk", "topk | batchtopk | jumprelu | relu (or any registered architecture)")
    k: int = _opt(32, "active latents per token (target L0 for batchtopk/jumprelu)", min=1)
    expansion: int = _opt(16, "latents = expansion x input width", min=0)
    n_latents: int = _opt(0, "overrides --expansion", min=0)
    normalize_input: bool = _opt(False, "scale inputs to E|x|^2 = d_in while training (folded in at save)",
                                 flag="--normalize-input/--raw-input")
    enc_init_scale: float = _opt(0.7, "encoder = decoder transpose x this at init", gt=0)
    l1_coef: float = _opt(0.05, "relu: L1 penalty", min=0)
    l0_coef: float = _opt(0.01, "jumprelu: L0 penalty", min=0)
    resume: bool = _opt(True, "--no-resume: start over in --out, replacing what is there", flag="--resume/--no-resume")
    train: TrainConfig = field(default_factory=TrainConfig)
    quiet: bool = field(default=False, metadata={"cli": False})


def sae_source(cfg: SaeTrainConfig, model: Any = None, tokenizer: Any = None) -> Any:
    """The activations a job trains on: a store, or a model (`cfg.model`, or the one given) read on the fly at its
    hook points, on the job's corpus (`--data`, or the built-in one)."""
    from ..report.job import open_job
    from .sources import ModelSource, StoreSource

    if cfg.store and (cfg.model or model is not None):
        raise ValueError("pass either --store or --model, not both")
    if cfg.store:
        if cfg.hook_in or cfg.hook_out:
            raise ValueError("a store holds residual layers only: use --layer, or --model for mlp sites")
        return StoreSource(cfg.store, cfg.layer)
    if not cfg.model and model is None:
        raise ValueError("no activations: pass --store DIR, or --model NAME (with --data) to capture on the fly")
    hin = cfg.hook_in or (f"resid_post.{cfg.layer}" if cfg.layer is not None else None)
    if hin is None:
        raise ValueError("which site? pass --layer L (residual stream) or --hook-in/--hook-out")
    with open_job(cfg, "sae", model, tokenizer, device=cfg.train.device) as job:
        model, tokenizer, texts = job.model, job.tokenizer, job.texts()
    if cfg.hook_out and cfg.hook_out != hin:  # a transcoder: refuse one that reads after it writes, by option
        from ..core.sites import check_forward_order

        try:
            check_forward_order(model, hin, cfg.hook_out)
        except ValueError as e:
            raise ValueError(f"--hook-in {hin} --hook-out {cfg.hook_out}: {e}") from None
    return ModelSource(model, tokenizer, texts, hin, cfg.hook_out or hin, context_len=cfg.context_len)


def run_sae_train(cfg: SaeTrainConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train and save into `cfg.out`; the run's metrics (rank 0 under torchrun; other ranks: {"rank": r})."""
    from ..core.io import read_json
    from .train import sae_config_for, train_sae

    source = sae_source(cfg, model, tokenizer)
    sae_cfg = sae_config_for(source, None, arch=cfg.arch, k=cfg.k, expansion=cfg.expansion, n_latents=cfg.n_latents,
                             normalize_input=cfg.normalize_input, l1_coef=cfg.l1_coef, l0_coef=cfg.l0_coef,
                             enc_init_scale=cfg.enc_init_scale)
    train_sae(source, sae_cfg, cfg.train, cfg.out, resume=cfg.resume, quiet=cfg.quiet)
    rank = int(os.environ.get("RANK", "0"))
    return read_json(Path(cfg.out) / "metrics.json") if rank == 0 else {"rank": rank}


@dataclass
class SaeEvalConfig(SourceModelOptions, DeviceOptions, CorpusOptions):
    """FVU, L0, dead fraction, LM loss recovered and KL with the SAE spliced into the model (SAE/eval.json)."""

    sae: str = _opt("", "SAE folder (probescope run, SAELens or sparsify layout)", nonempty=_SAE_HINT)
    contexts: int = _opt(32, "contexts for the LM-loss metrics", min=1)
    context_len: int = _opt(128, "tokens per context", min=1)
    tokens: int = _opt(65536, "tokens for FVU, L0 and dead fraction", min=1)
    hook: str | None = _opt(None, "refuse an SAE trained elsewhere than this site")


def _sae_and_model(cfg: Any, model: Any = None, tokenizer: Any = None,
                   hook: str | None = None) -> tuple[Any, Any, Any, str, list[str]]:
    """The SAE at `cfg.sae`, the model it reads (the one given, `cfg.model`, or the one its config records) on
    one device, that model's name and the job's corpus; the SAE's sites are checked against that model."""
    from ..core.models.registry import model_id
    from ..report.job import open_job
    from .formats import check_sae_sites, load_sae

    s = load_sae(cfg.sae, hook=hook)
    name = cfg.model or (model_id(model) if model is not None else s.cfg.model)
    if not name:
        raise ValueError(f"the SAE in {cfg.sae} names no model: pass --model")
    with open_job(cfg, "sae", model, tokenizer, name=name) as job:
        model, tokenizer, texts = job.model, job.tokenizer, job.texts()
    check_sae_sites(s, model, cfg.sae, name)
    return s.to(next(model.parameters()).device), model, tokenizer, name, texts


def run_sae_eval(cfg: SaeEvalConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Evaluate the SAE at `cfg.sae` on `cfg.data`; the figures also land in SAE/eval.json."""
    from ..core.io import atomic_write_json
    from ..core.store import make_contexts
    from .evaluate import evaluate_sae
    from .sources import ModelSource

    s, lm, tok, name, texts = _sae_and_model(cfg, model, tokenizer, cfg.hook)
    src = ModelSource(lm, tok, texts, s.cfg.hook_in, s.cfg.hook_out, context_len=cfg.context_len)
    if src.d_in != s.cfg.d_in:
        raise ValueError(f"the SAE reads width {s.cfg.d_in}, but {s.cfg.hook_in} of {name} has width {src.d_in}")
    ids = make_contexts(tok, texts, cfg.context_len, max_contexts=cfg.contexts)
    res = evaluate_sae(s, src, model=lm, input_ids=ids, tokens=cfg.tokens, batch_size=min(4096, cfg.tokens))
    atomic_write_json(Path(cfg.sae) / "eval.json", res)
    return res


@dataclass
class SaeLatentsConfig(SourceModelOptions, DeviceOptions, CorpusOptions):
    """Top-activating contexts, frequency and a short label per latent: SAE/latents.json and cards on its page."""

    sae: str = _opt("", "SAE folder", nonempty=_SAE_HINT)
    contexts: int = _opt(64, "contexts to scan", min=1)
    context_len: int = _opt(64, "tokens per context", min=1)
    top_n: int = _opt(8, "top contexts kept per latent", min=1)


def run_sae_latents(cfg: SaeLatentsConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Label every latent by its top contexts; a summary (file, counts, labels)."""
    from ..core.store import make_contexts
    from .latents import latent_stats, save_latent_stats

    s, lm, tok, _, texts = _sae_and_model(cfg, model, tokenizer)
    ids = make_contexts(tok, texts, cfg.context_len, max_contexts=cfg.contexts)
    stats = latent_stats(s, lm, tok, ids, top_n=cfg.top_n)
    save_latent_stats(stats, cfg.sae)
    lat = stats["latents"]
    return {"latents_file": str(Path(cfg.sae) / "latents.json"), "n_latents": len(lat),
            "n_fired": sum(1 for r in lat.values() if r.get("top_contexts")),
            "labels": {j: r["label"] for j, r in lat.items()}}
