"""The SAE wing's jobs: `run_sae_train`, `run_sae_eval`, `run_sae_latents`, each from one config dataclass whose
fields are the CLI's options (`probescope sae train | eval | latents`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.options import option as _opt
from .config import TrainConfig


def _texts(data: str | None) -> list[str]:
    from ..core.data import default_corpus, read_texts

    return list(default_corpus()) if data in (None, "", "default") else read_texts(data)


@dataclass
class SaeTrainJob:
    """Train an SAE (or transcoder) from a store or straight from a model; works under torchrun (DDP)."""

    out: str = _opt("runs/sae", "run folder (resumed if it holds a checkpoint)")
    store: str | None = _opt(None, "activation store folder (from `probescope cache`)")
    model: str | None = _opt(None, "capture on the fly from this model (with --data)")
    data: str | None = _opt(None, "texts for --model: JSONL/CSV/TXT; default: stdlib docstrings")
    layer: int | None = _opt(None, "residual stream after this block (resid_post.L)")
    hook_in: str | None = _opt(None, "site read, e.g. mlp_in.3 (transcoders)")
    hook_out: str | None = _opt(None, "site predicted, e.g. mlp_out.3 (transcoders)")
    context_len: int = _opt(128, "tokens per context when capturing from --model")
    arch: str = _opt("topk", "topk | batchtopk | jumprelu | relu (or any registered architecture)")
    k: int = _opt(32, "active latents per token (target L0 for batchtopk/jumprelu)")
    expansion: int = _opt(16, "latents = expansion x input width")
    n_latents: int = _opt(0, "overrides --expansion")
    normalize_input: bool = _opt(False, "scale inputs to E|x|^2 = d_in while training (folded in at save)",
                                 flag="--normalize-input/--raw-input")
    enc_init_scale: float = _opt(0.7, "encoder = decoder transpose x this at init")
    l1_coef: float = _opt(0.05, "relu: L1 penalty")
    l0_coef: float = _opt(0.01, "jumprelu: L0 penalty")
    resume: bool = _opt(True, "--no-resume: start over in --out, replacing what is there", flag="--resume/--no-resume")
    train: TrainConfig = field(default_factory=TrainConfig)
    quiet: bool = field(default=False, metadata={"cli": False})


def sae_source(job: SaeTrainJob) -> Any:
    """The activations a job trains on: a store, or a model read on the fly at its hook points."""
    from .sources import ModelSource, StoreSource

    if job.store and job.model:
        raise ValueError("pass either --store or --model, not both")
    if job.store:
        if job.hook_in or job.hook_out:
            raise ValueError("a store holds residual layers only: use --layer, or --model for mlp sites")
        return StoreSource(job.store, job.layer)
    if not job.model:
        raise ValueError("no activations: pass --store DIR, or --model NAME (with --data) to capture on the fly")
    from ..core.models.registry import load_model

    hin = job.hook_in or (f"resid_post.{job.layer}" if job.layer is not None else None)
    if hin is None:
        raise ValueError("which site? pass --layer L (residual stream) or --hook-in/--hook-out")
    lm, tok = load_model(job.model, device=job.train.device)
    if job.hook_out and job.hook_out != hin:  # a transcoder: refuse one that reads after it writes, by option
        from ..core.sites import check_forward_order

        try:
            check_forward_order(lm, hin, job.hook_out)
        except ValueError as e:
            raise ValueError(f"--hook-in {hin} --hook-out {job.hook_out}: {e}") from None
    return ModelSource(lm, tok, _texts(job.data), hin, job.hook_out or hin, context_len=job.context_len)


def run_sae_train(job: SaeTrainJob) -> dict[str, Any]:
    """Train and save into `job.out`; the run's metrics (rank 0 under torchrun; other ranks: {"rank": r})."""
    from ..core.io import read_json
    from .train import sae_config_for, train_sae

    source = sae_source(job)
    sae_cfg = sae_config_for(source, None, arch=job.arch, k=job.k, expansion=job.expansion, n_latents=job.n_latents,
                             normalize_input=job.normalize_input, l1_coef=job.l1_coef, l0_coef=job.l0_coef,
                             enc_init_scale=job.enc_init_scale)
    train_sae(source, sae_cfg, job.train, job.out, resume=job.resume, quiet=job.quiet)
    rank = int(os.environ.get("RANK", "0"))
    return read_json(Path(job.out) / "metrics.json") if rank == 0 else {"rank": rank}


@dataclass
class SaeEvalJob:
    """FVU, L0, dead fraction, LM loss recovered and KL with the SAE spliced into the model (SAE/eval.json)."""

    sae: str = _opt("", "SAE folder (probescope run, SAELens or sparsify layout)")
    model: str | None = _opt(None, "default: the model named in the SAE's config")
    data: str | None = _opt(None, "texts: JSONL/CSV/TXT; default: stdlib docstrings")
    contexts: int = _opt(32, "contexts for the LM-loss metrics")
    context_len: int = _opt(128, "tokens per context")
    tokens: int = _opt(65536, "tokens for FVU, L0 and dead fraction")
    hook: str | None = _opt(None, "refuse an SAE trained elsewhere than this site")
    device: str = _opt("auto", "auto | cpu | cuda[:N]")


def _sae_and_model(path: str, model: str | None, device: str, hook: str | None = None) -> tuple[Any, Any, Any, str]:
    """The SAE at `path`, the model it reads (named, or the one its config records) on the same device."""
    from ..core.models.registry import load_model
    from .formats import load_sae

    if not path:
        raise ValueError("no SAE given: pass --sae FOLDER (a probescope run, SAELens or sparsify layout)")
    from .formats import check_sae_sites

    s = load_sae(path, hook=hook)
    name = model or s.cfg.model
    if not name:
        raise ValueError(f"the SAE in {path} names no model: pass --model")
    lm, tok = load_model(name, device=device)
    check_sae_sites(s, lm, path, name)
    return s.to(next(lm.parameters()).device), lm, tok, name


def run_sae_eval(job: SaeEvalJob) -> dict[str, Any]:
    """Evaluate the SAE at `job.sae` on `job.data`; the figures also land in SAE/eval.json."""
    from ..core.io import atomic_write_json
    from ..core.store import make_contexts
    from .evaluate import evaluate_sae
    from .sources import ModelSource

    s, lm, tok, name = _sae_and_model(job.sae, job.model, job.device, job.hook)
    texts = _texts(job.data)
    src = ModelSource(lm, tok, texts, s.cfg.hook_in, s.cfg.hook_out, context_len=job.context_len)
    if src.d_in != s.cfg.d_in:
        raise ValueError(f"the SAE reads width {s.cfg.d_in}, but {s.cfg.hook_in} of {name} has width {src.d_in}")
    ids = make_contexts(tok, texts, job.context_len, max_contexts=job.contexts)
    res = evaluate_sae(s, src, model=lm, input_ids=ids, tokens=job.tokens, batch_size=min(4096, job.tokens))
    atomic_write_json(Path(job.sae) / "eval.json", res)
    return res


@dataclass
class SaeLatentsJob:
    """Top-activating contexts, frequency and a short label per latent: SAE/latents.json and cards on its page."""

    sae: str = _opt("", "SAE folder")
    model: str | None = _opt(None, "default: the model named in the SAE's config")
    data: str | None = _opt(None, "texts: JSONL/CSV/TXT; default: stdlib docstrings")
    contexts: int = _opt(64, "contexts to scan")
    context_len: int = _opt(64, "tokens per context")
    top_n: int = _opt(8, "top contexts kept per latent")
    device: str = _opt("auto", "auto | cpu | cuda[:N]")


def run_sae_latents(job: SaeLatentsJob) -> dict[str, Any]:
    """Label every latent by its top contexts; a summary (file, counts, labels)."""
    from ..core.store import make_contexts
    from .latents import latent_stats, save_latent_stats

    s, lm, tok, _ = _sae_and_model(job.sae, job.model, job.device)
    ids = make_contexts(tok, _texts(job.data), job.context_len, max_contexts=job.contexts)
    stats = latent_stats(s, lm, tok, ids, top_n=job.top_n)
    save_latent_stats(stats, job.sae)
    lat = stats["latents"]
    return {"latents_file": str(Path(job.sae) / "latents.json"), "n_latents": len(lat),
            "n_fired": sum(1 for r in lat.values() if r.get("top_contexts")),
            "labels": {j: r["label"] for j, r in lat.items()}}
