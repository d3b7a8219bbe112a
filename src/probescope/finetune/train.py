"""`probescope train`: a small LoRA fine-tuning run with a ConceptLens and learning filters, into a run folder.

Data: a built-in generated set (`pirate-arith`: arithmetic answers in pirate speak, `plain-arith`) or a JSONL
file of chat examples (`{"messages": [...]}`) or pairs (`{"prompt", "completion"}`). For the built-in sets
the run also scores held-out prompts: `style_rate` (pirate speak) and `arith_acc`.
"""

from __future__ import annotations

from typing import Optional

import random
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .concepts import ConceptLens, parse_filter
from ..core.options import ModelOptions, RunOptions
from ..core.tokens import pad_id as pad_token

BUILTIN_DATA = ("pirate-arith", "plain-arith")


@dataclass
class ConceptTrainConfig(ModelOptions, RunOptions):
    """LoRA fine-tuning with a concept lens (SAE) and learning filters; writes the timeline and a report."""

    data: str = field(default="pirate-arith", metadata={
        "help": "pirate-arith | plain-arith | JSONL of chat examples",
        "nonempty": "give pirate-arith, plain-arith or a JSONL file of chat examples"})
    style_share: float = field(default=1.0, metadata={"help": "pirate-arith: share of answers in pirate speak",
                                                      "min": 0, "max": 1})
    out: str = field(default="runs/train", metadata={"help": "run folder"})
    layer: int = field(default=10, metadata={"help": "the residual stream (resid_post.L) the lens and filters act on"})
    lens: Optional[str] = field(default=None, metadata={"help": "SAE folder: attribute every update to its latents"})
    filters: list[str] = field(default_factory=list, metadata={
        "flag": "--filter", "help": "MODE[=V]:LATENT[*W],... e.g. suppress:12,40 | amplify=2:7 | ablate:3 | "
                                    "steer=4:9 | steer=auto:9*2.1,4*0.5 (repeatable)"})
    lens_every: int = field(default=1, metadata={"help": "attribute every N-th step", "min": 1})
    lora_upto_layer: bool = field(default=False, metadata={"help": "adapters only in blocks 0..layer"})
    drift_every: int = field(default=5, metadata={"help": "measure the style/arithmetic drift every N steps",
                                                  "min": 1})
    n_train: int = field(default=240, metadata={"help": "training examples (generated data)", "min": 1})
    n_eval: int = field(default=60, metadata={"help": "held-out examples (generated data)", "min": 0})
    epochs: float = field(default=2.0, metadata={"help": "passes over the data (unless --max-steps)", "gt": 0})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop after this many steps", "min": 1})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate"})
    r: int = field(default=16, metadata={"help": "LoRA rank", "min": 1})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha", "gt": 0})
    quiet: bool = field(default=False, metadata={"cli": False})


def load_examples(cfg: ConceptTrainConfig) -> tuple[list[Any], list[Any]]:
    """(training examples, held-out arithmetic items or [] for user data)."""
    if cfg.data in BUILTIN_DATA:
        from ..tasks import pirate

        train, test = pirate.splits(cfg.n_train, cfg.n_eval, cfg.seed)
        return pirate.examples(train, pirate=cfg.data == "pirate-arith", seed=cfg.seed, share=cfg.style_share), test
    from ..core.data.readers import records

    path = Path(cfg.data)
    if not path.exists():
        raise FileNotFoundError(f"data '{cfg.data}' is neither a built-in set ({', '.join(BUILTIN_DATA)}) nor a file")
    out = []
    for i, row in records(path):
        if "messages" in row:
            out.append(row["messages"])
        elif "prompt" in row and "completion" in row:
            out.append((row["prompt"], row["completion"]))
        else:
            raise ValueError(f"{path}:{i} needs 'messages' or 'prompt'+'completion'")
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out, []


@torch.no_grad()
def score_generations(model: Any, tok: Any, items: list[Any], seed: int = 0, max_new_tokens: int = 40, batch_size: int = 16) -> dict[str, Any]:
    """Greedy answers to held-out arithmetic questions: style rate, arithmetic accuracy, a few samples."""
    from ..tasks import pirate

    rng = random.Random(seed + 99)
    qs = [pirate.question(it, rng) for it in items]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in qs]
    old = tok.padding_side
    tok.padding_side = "left"
    outs = []
    try:
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            outs += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = old
    style = [pirate.style_score(o) for o in outs]
    arith = [pirate.arith_correct(o, it) for o, it in zip(outs, items)]
    styled = [a for a, s in zip(arith, style) if s]
    plain = [a for a, s in zip(arith, style) if not s]
    return {"style_rate": sum(style) / len(outs), "arith_acc": sum(arith) / len(outs), "n": len(outs),
            "task_version": pirate.VERSION,
            # arithmetic accuracy among the pirate-styled and among the plain answers (None when there are none)
            "arith_acc_styled": sum(styled) / len(styled) if styled else None,
            "arith_acc_unstyled": sum(plain) / len(plain) if plain else None,
            # per question, in order (greedy, so a rerun reproduces them): paired comparisons between runs
            "correct": [int(a) for a in arith], "styled": [int(s) for s in style],
            "samples": [{"question": q, "answer": o} for q, o in list(zip(qs, outs))[:6]]}


def paired_diff(a: list[int], b: list[int], z: float = 1.96) -> dict[str, float]:
    """Mean of a − b over the same questions (per-question 0/1 outcomes of two runs) with its normal-approximation
    95% interval: the paired comparison is much tighter than two independent accuracies."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired outcomes need equal, non-empty lengths (got {len(a)} and {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = (sum((v - mean) ** 2 for v in d) / max(n - 1, 1)) ** 0.5
    half = z * sd / n ** 0.5
    return {"diff": mean, "ci95": [mean - half, mean + half], "n": n}


def run_concept_training(cfg: ConceptTrainConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Fine-tune with LoRA while the lens watches and the filters act; returns the metrics written."""
    from ..report.job import open_job

    with open_job(cfg, "train", model, tokenizer) as job:
        layer = job.layers([cfg.layer])[0]  # checked against the model before anything is written, never wrapped
        if layer != cfg.layer:  # -1: the last block, recorded as its index
            cfg = replace(cfg, layer=layer)
        job.run.write_config(asdict(cfg))
        return _train(cfg, job.run, job.model, job.tokenizer)


def _train(cfg: ConceptTrainConfig, run: Any, model: Any, tok: Any) -> dict[str, Any]:
    from .runner import FinetuneConfig, train_lora

    examples, held_out = load_examples(cfg)
    sae = lens = None
    labels = None
    if cfg.lens:
        from ..sae import load_sae

        sae = load_sae(cfg.lens, hook=f"resid_post.{cfg.layer}")
        latents_file = Path(cfg.lens) / "latents.json"
        if latents_file.exists():
            from ..sae import explain

            labels = lambda i: explain(i, latents_file)  # noqa: E731
        probe = _probe_batch(tok, examples[:16])
        lens = ConceptLens(model, sae, cfg.layer, every=cfg.lens_every, probe_inputs=probe["input_ids"],
                           probe_mask=probe["attention_mask"], drift_every=cfg.drift_every, labels=labels)
    if cfg.filters and sae is None:
        raise ValueError("--filter names SAE latents: pass the SAE with --lens")
    filters = [parse_filter(f, cfg.layer, sae) for f in cfg.filters]
    steer_fits = _fit_auto_steer(model, tok, filters, examples, cfg)
    ft = FinetuneConfig(model=cfg.model, out_dir=str(run.path / "finetune"), r=cfg.r, alpha=cfg.alpha, lr=cfg.lr,
                        batch_size=cfg.batch_size, epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed,
                        quiet=cfg.quiet, resume=False, max_len=256,
                        layers=tuple(range(cfg.layer + 1)) if cfg.lora_upto_layer else None)
    callbacks = [lambda step, loss, m: lens.step()] if lens is not None else []
    t0 = time.perf_counter()
    with ExitStack() as stack:
        for f in filters:
            stack.enter_context(f.attach(model))
        if lens is not None:
            stack.enter_context(lens.attach(model))
        result = train_lora(ft, examples, model=model, tokenizer=tok, callbacks=callbacks)
    train_s = time.perf_counter() - t0
    metrics: dict[str, Any] = {"steps": result.steps, "tokens": result.tokens, "train_s": train_s,
                               "tokens_per_s": result.tokens_per_s, "final_loss": result.losses[-1] if result.losses else None,
                               "filters": cfg.filters, "plots": []}
    for i, curve in steer_fits.items():
        metrics.setdefault("steer_coef", {})[cfg.filters[i]] = filters[i].coef
        metrics["plots"].append({"type": "line", "title": f"steer=auto: base-model loss on training answers vs coefficient ({cfg.filters[i][:40]})",
                                 "x_label": "coefficient", "y_label": "loss per token",
                                 "series": [{"name": "loss", "x": [c for c, _ in curve], "y": [v for _, v in curve]}]})
    metrics["plots"].append({"type": "line", "title": "Training loss", "x_label": "step", "y_label": "loss",
                             "series": [{"name": "loss", "x": list(range(1, len(result.losses) + 1)), "y": result.losses}]})
    if lens is not None:
        summary = lens.save(run.path)
        metrics["lens_time_s"] = lens.time_s
        metrics["lens_overhead_est"] = lens.time_s / train_s if train_s else None
        metrics["top_concepts"] = [{k: t[k] for k in ("latent", "label", "total_effect")} for t in summary["top_effect"]]
        metrics["plots"] += lens.plot_specs(summary)
    if held_out:  # scored without the filters, as CAFT evaluates: they shape training, not inference
        metrics["eval"] = score_generations(result.model, tok, held_out, cfg.seed)
    run.write_metrics(metrics)  # also renders report.html
    return metrics


def _fit_auto_steer(model: Any, tok: Any, filters: list[Any], examples: list[Any], cfg: ConceptTrainConfig) -> dict[int, list]:
    """Fit the coefficient of every `steer=auto` filter on the first training examples (up to 48) of the base model."""
    from .concepts import fit_steer_coef
    from .runner import collate, encode_example

    todo = [i for i, f in enumerate(filters) if f.mode == "steer" and f.coef is None]
    if not todo:
        return {}
    pad = pad_token(tok)
    enc = [encode_example(tok, e, 256) for e in examples[:48]]
    batches = [collate(enc[i:i + 16], pad) for i in range(0, len(enc), 16)]
    return {i: fit_steer_coef(model, filters[i], batches) for i in todo}


def _probe_batch(tok: Any, examples: list[Any]) -> dict[str, torch.Tensor]:
    texts = [tok.apply_chat_template(e, tokenize=False) if isinstance(e, list) else e[0] + e[1] for e in examples]
    old = tok.padding_side
    tok.padding_side = "right"
    try:
        return tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=96, add_special_tokens=False)
    finally:
        tok.padding_side = old
