"""Steering vector vs few-shot examples vs a LoRA fine-tune, on one generated behaviour (upbeat sentiment).

Every row is measured the same way: the word-list sentiment of greedy answers to held-out neutral requests
(effect), the KL from the unchanged model and the perplexity of neutral factual sentences given as the
assistant's reply to a neutral request (cost), the seconds to make it, and the generation time and extra prompt
tokens at inference. The LoRA row uses `probescope.finetune.train_lora` with a small step budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from ..report.job import open_job
from .jobs import CompareConfig
from .evaluate import cost, generate, behaviour, next_token_ids, nothing, text_logprobs
from .pairs import NEUTRAL_REQUEST, chat_prompt, eval_prompts, neutral_texts, positive_answers, sentiment_pairs


def measure_row(model, tok, neutral, base_lp, ctx, effect, timing_prompts, *, prefix=None, neutral_ctx=None,
                make_s: float = 0.0, extra_tokens: float = 0, extra_params: int = 0,
                base_gen_s: float | None = None) -> dict[str, Any]:
    """One row of a pipes-vs-water table, measured the same way for every method.

    Inside `ctx()`: `effect()` (a dict of the row's effect figures, with its own timings) and the fixed-length
    generation time of `timing_prompts[:4]`; inside `neutral_ctx()` (default `ctx`): the log-probs of the `neutral`
    texts (after `prefix`), priced against `base_lp` (KL, perplexity). Adds make seconds, extra prompt tokens and
    parameters, and the generation time ratio to `base_gen_s`."""
    with ctx():
        r = effect()
        fixed_s = _fixed_length_seconds(model, tok, timing_prompts[:4], 16)
    with (neutral_ctx or ctx)():
        lp = text_logprobs(model, tok, neutral, prefix=prefix)
    r.update(cost(base_lp, lp, next_token_ids(tok, neutral)))
    r.update(make_seconds=make_s, fixed_length_generate_seconds=fixed_s, extra_prompt_tokens=extra_tokens,
             extra_params=extra_params)
    r["generate_time_ratio"] = fixed_s / base_gen_s if base_gen_s else 1.0
    return r


def _row(model, tok, prompts, neutral, prefix, base_lp, ctx, cfg, make_s, extra_tokens, extra_params, base_gen_s=None):
    def effect() -> dict[str, Any]:
        t0 = time.perf_counter()
        gens = generate(model, tok, prompts, cfg.max_new_tokens)
        return {**behaviour(gens), "generate_seconds": time.perf_counter() - t0, "samples": gens[:3]}

    return measure_row(model, tok, neutral, base_lp, ctx, effect, prompts, prefix=prefix, make_s=make_s,
                       extra_tokens=extra_tokens, extra_params=extra_params, base_gen_s=base_gen_s)


def _fixed_length_seconds(model, tok, prompts, n_tokens: int) -> float:
    """Seconds to generate exactly `n_tokens` for `prompts` (EOS suppressed, so every row costs the same length)."""
    from ..core.capture import tokenize

    enc = tokenize(tok, prompts, padding_side="left")
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t0


def run_comparison(cfg: CompareConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Measure the four rows (baseline, steering, few-shot, LoRA); writes metrics.json + table.md under `out`.

    The LoRA row is trained last and merged into `model`'s weights: reload the model afterwards.
    """
    with open_job(cfg, "steering-compare", model, tokenizer) as job:
        job.layers([cfg.layer])  # checked against the model before anything is written, never wrapped
        job.run.write_config(cfg)
        return _run_comparison(cfg, job.model, job.tokenizer, job.run)


def _run_comparison(cfg: CompareConfig, model: Any, tokenizer: Any, run: Any) -> dict[str, Any]:
    from ..finetune.runner import FinetuneConfig, train_lora
    from .vector import SteeringVector

    tok = tokenizer
    prompts = eval_prompts(tok, cfg.n_prompts, cfg.seed)
    neutral = neutral_texts(cfg.n_neutral)
    prefix = chat_prompt(tok, NEUTRAL_REQUEST)
    base_lp = text_logprobs(model, tok, neutral, prefix=prefix)
    rows: dict[str, dict[str, Any]] = {}
    rows["baseline"] = _row(model, tok, prompts, neutral, prefix, base_lp, nothing, cfg, 0.0, 0, 0)
    base_gen = rows["baseline"]["fixed_length_generate_seconds"]
    sign = 1 if cfg.direction == "up" else -1  # --direction is up or down (its choices)

    t0 = time.perf_counter()
    vec = SteeringVector.train(model, tok, sentiment_pairs(tok, cfg.n_pairs, cfg.seed), [cfg.layer])
    make = time.perf_counter() - t0
    rows["steering"] = _row(model, tok, prompts, neutral, prefix, base_lp,
                            lambda: vec.apply(model, multiplier=cfg.multiplier), cfg, make, 0, vec.d_model, base_gen)

    shots = positive_answers(cfg.n_shots, cfg.seed, sign)
    fs_prompts = eval_prompts(tok, cfg.n_prompts, cfg.seed, history=shots)
    fs_prefix = chat_prompt(tok, NEUTRAL_REQUEST, history=shots)
    extra = len(tok(fs_prompts[0])["input_ids"]) - len(tok(prompts[0])["input_ids"])
    rows["few-shot"] = _row(model, tok, fs_prompts, neutral, fs_prefix, base_lp, nothing, cfg, 0.0, extra, 0, base_gen)

    ft = FinetuneConfig(model=cfg.model, out_dir=str(run.path / "lora"), r=cfg.lora_r, alpha=2 * cfg.lora_r,
                        lr=cfg.lora_lr, batch_size=cfg.lora_batch, max_steps=cfg.lora_steps, warmup_steps=2,
                        checkpoint_every=10_000, resume=False, seed=cfg.seed, quiet=True, threads=cfg.threads or None)
    t0 = time.perf_counter()
    res = train_lora(ft, positive_answers(cfg.lora_examples, cfg.seed, sign), model=model, tokenizer=tok)
    make = time.perf_counter() - t0
    peft_model = res.model
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    merged = peft_model.merge_and_unload()  # merged: no inference overhead, as deployed
    rows["lora"] = _row(merged, tok, prompts, neutral, prefix, base_lp, nothing, cfg, make, 0, n_lora, base_gen)
    rows["lora"]["steps"] = res.steps
    for r in rows.values():
        r["effect"] = sign * (r["sentiment"] - rows["baseline"]["sentiment"])
    metrics = {"kind": "steering-compare",
               "behaviour": f"{'upbeat' if sign > 0 else 'downbeat'} sentiment (word-list score of generations)",
               "config": asdict(cfg), "rows": rows,
               "note": "LoRA merged into the weights after training (the model object is modified: reload it)"}
    run.write_metrics(metrics)
    (run.path / "table.md").write_text(table_markdown(rows) + "\n")
    metrics["run_dir"] = str(run.path)
    return metrics


def table_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One markdown table: effect, cost on neutral text, compute to make, compute at inference."""
    head = ("| method | effect (Δ sentiment) | sentiment | pos / neg rate | KL on neutral (nats/tok) | neutral ppl | "
            "make (s) | gen time vs base | extra prompt tokens | extra params |")
    lines = [head, "|" + "---|" * 10]
    for name, r in rows.items():
        ratio = r.get("generate_time_ratio", 1.0)
        lines.append(f"| {name} | {r.get('effect', 0.0):+.2f} | {r['sentiment']:+.2f} | "
                     f"{r['positive_rate']:.2f} / {r['negative_rate']:.2f} | {r['kl']:.4f} | {r['ppl']:.2f} | "
                     f"{r['make_seconds']:.1f} | {ratio:.2f}x | {r['extra_prompt_tokens']} | {r['extra_params']:,} |")
    return "\n".join(lines)
