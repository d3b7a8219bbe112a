"""The pipes-vs-water table's ICL rows: an N-shot prompt vs the vectors it converts to vs a LoRA, on one generated
ICL task (issue 18, item 4).

Every method learns from the same `n_examples` labelled pairs of the task (the *examples*); the held-out queries
(`n_queries`) share no word with them. Rows:

* **0-shot**: the query alone, `x ->`.
* **N-shot prompt**: N demonstrations drawn (per query) from the examples, then `x ->`.
* **function vector** / **task vector**: converted from N-shot prompts on the examples (each example is once the
  query, its N shots drawn from the others) by `fv.icl_vectors` (heads by average indirect effect; mean-difference
  residual; layer × scale chosen on those prompts), added at the last token of the zero-shot prompt.
* **LoRA**: `finetune.train_lora` on the examples as `("x ->", " y")` pairs, a small step budget, answering
  zero-shot (the adapter merged into the weights while it is measured, then taken out again).

Columns, measured the same way for every row (`compare.measure_row`, shared with the sentiment table): effect =
first-token accuracy on the held-out queries (and its share of the N-shot gain); cost = KL from the unchanged
model and perplexity on neutral sentences (`evaluate.cost`) — after the N demonstrations for the N-shot row, with
the vector added at the first token for the vector rows (where a steered prompt's last token would be; the KL with
the vector added at every token is kept too, `kl_every_position`); seconds to make; extra prompt tokens, scoring
time (one forward of the held-out queries, median of 3) and fixed-length generation time at inference.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from dataclasses import asdict
from typing import Any, Sequence

import torch

from ..report.job import open_job
from .compare import measure_row
from .evaluate import cost, next_token_ids, nothing, text_logprobs
from .jobs import IclCompareConfig

ROWS = {"zero_shot": "0-shot", "n_shot": "N-shot prompt", "function_vector": "function vector",
        "task_vector": "task vector", "lora": "LoRA"}
COLUMNS = ["accuracy", "delta_accuracy", "recovery", "kl", "ppl", "make_seconds", "extra_prompt_tokens",
           "score_seconds", "score_time_ratio", "fixed_length_generate_seconds", "generate_time_ratio", "extra_params"]


def split_examples(task: Any, n_examples: int, n_queries: int, seed: int = 0
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(examples, held-out queries): random pairs of the task; no query shares a word with an example."""
    rng = random.Random(seed)
    pairs = list(task.pairs)
    rng.shuffle(pairs)
    examples = pairs[:n_examples]
    words = {w for p in examples for w in p}
    pool = [p for p in pairs[n_examples:] if p[0] not in words and p[1] not in words]
    if len(examples) < n_examples or len(pool) < n_queries:
        raise ValueError(f"task {task.name!r} has {len(task.pairs)} pairs: {n_examples} examples leave {len(pool)} "
                         f"held-out queries, {n_queries} asked; use fewer --n-examples or --n-queries")
    return examples, pool[:n_queries]


def demonstrations(shots: Sequence[tuple[str, str]]) -> str:
    """The N demonstration lines of an N-shot prompt (`x -> y`), without a query."""
    from .icl_tasks import icl_prompt

    return icl_prompt(shots, "")[: -len(" ->")]


@contextlib.contextmanager
def add_at_last_token(model: Any, layer: int, vector: torch.Tensor):
    """Add `vector` after block `layer` at the last token of every multi-token forward (the prompt; decode steps of
    `generate` are left alone): how a function / task vector is used at inference."""
    from ..core.sites import site_hooks

    def fn(x: torch.Tensor) -> torch.Tensor | None:
        if x.shape[1] < 2:
            return None
        x = x.clone()
        x[:, -1] += vector.to(x.device, x.dtype)
        return x

    with site_hooks(model, {f"resid_post.{layer}": fn}):
        yield


@contextlib.contextmanager
def add_at_positions(model: Any, layer: int, vector: torch.Tensor, first_only: bool):
    """Add `vector` after block `layer` at the first token (`first_only`) or at every token: the vector rows' cost
    on neutral text (a text read as the continuation of a steered prompt; or the vector always on)."""
    from ..core.sites import site_hooks

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        if first_only:
            x[:, 0] += vector.to(x.device, x.dtype)
        else:
            x += vector.to(x.device, x.dtype)
        return x

    with site_hooks(model, {f"resid_post.{layer}": fn}):
        yield


def run_icl_comparison(cfg: IclCompareConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Measure the five rows; writes config.json, metrics.json (rows, a table and a bar plot for the report page)
    and table.md into the run folder `out`. The model is left as it was (the LoRA is taken out again)."""
    from .icl_tasks import IclTask

    task = IclTask.builtin(cfg.task)
    examples, held_out = split_examples(task, cfg.n_examples, cfg.n_queries, cfg.seed)  # before loading the model
    with open_job(cfg, "steering-compare-icl", model, tokenizer) as job:
        return _run(cfg, job, task, examples, held_out)


def _run(cfg: IclCompareConfig, job: Any, task: Any, examples: list[tuple[str, str]],
         held_out: list[tuple[str, str]]) -> dict[str, Any]:
    from ..core.models import model_id
    from .fv import build_set, icl_vectors, zero_shot_scores
    from .icl_tasks import SEP, check_context
    from .pairs import neutral_texts

    t_start = time.perf_counter()
    model, tok = job.model, job.tokenizer
    check_context(model, tok, task, cfg.n_shots)
    run = job.run
    run.write_config(cfg)
    rng = random.Random(cfg.seed + 1)
    dev = build_set(tok, task, examples, examples, cfg.n_shots, rng)  # each example once the query
    test = build_set(tok, task, held_out, examples, cfg.n_shots, rng)
    neutral = neutral_texts(cfg.n_neutral)
    demo = demonstrations(examples[: cfg.n_shots])
    base_lp = text_logprobs(model, tok, neutral)

    def scorer(prompts: list[str]):
        def effect() -> dict[str, Any]:
            times, res = [], None
            for _ in range(3):
                t0 = time.perf_counter()
                r = zero_shot_scores(model, tok, prompts, test.answers, batch_size=cfg.batch_size)
                times.append(time.perf_counter() - t0)
                res = res or r
            return {"accuracy": res["accuracy"], "answer_logprob": res["answer_logprob"],
                    "prompt_tokens": res["prompt_tokens"], "score_seconds": statistics.median(times)}
        return effect

    rows: dict[str, dict[str, Any]] = {}
    rows["zero_shot"] = measure_row(model, tok, neutral, base_lp, nothing, scorer(test.zero), test.zero)
    base_gen = rows["zero_shot"]["fixed_length_generate_seconds"]
    zero_tokens = rows["zero_shot"]["prompt_tokens"]

    rows["n_shot"] = measure_row(model, tok, neutral, base_lp, nothing, scorer(test.clean), test.clean, prefix=demo,
                                 base_gen_s=base_gen)
    rows["n_shot"]["extra_prompt_tokens"] = rows["n_shot"]["prompt_tokens"] - zero_tokens

    vecs = icl_vectors(model, tok, dev, cfg.fv_top_k, cfg.batch_size, screen=cfg.fv_screen)
    for key, v, layer, scale, make in [("function_vector", vecs.fv, vecs.fv_layer, vecs.fv_scale, vecs.fv_seconds),
                                       ("task_vector", vecs.tv, vecs.tv_layer, vecs.tv_scale, vecs.tv_seconds)]:
        w = v * scale
        rows[key] = measure_row(model, tok, neutral, base_lp, lambda w=w, L=layer: add_at_last_token(model, L, w),
                                scorer(test.zero), test.zero,
                                neutral_ctx=lambda w=w, L=layer: add_at_positions(model, L, w, first_only=True),
                                make_s=make, extra_params=w.numel(), base_gen_s=base_gen)
        with add_at_positions(model, layer, w, first_only=False):
            every = cost(base_lp, text_logprobs(model, tok, neutral), next_token_ids(tok, neutral))
        rows[key].update(layer=layer, scale=scale, norm=float(w.norm()), kl_every_position=every["kl"],
                         ppl_every_position=every.get("ppl"))
    rows["function_vector"]["top_heads"] = [f"L{L}.H{h} ({e:+.3f})" for L, h, e in vecs.search.top(cfg.fv_top_k)]

    rows["lora"] = _lora_row(cfg, run, model, tok, examples, SEP, neutral, base_lp, scorer(test.zero), test.zero,
                             base_gen)

    base_acc = rows["zero_shot"]["accuracy"]
    gain = rows["n_shot"]["accuracy"] - base_acc
    for r in rows.values():
        r["delta_accuracy"] = r["accuracy"] - base_acc
        r["recovery"] = (r["accuracy"] - base_acc) / gain if gain > 0 else None
        r["score_time_ratio"] = r["score_seconds"] / rows["zero_shot"]["score_seconds"]
    metrics = {
        "kind": "steering-compare-icl", "model": model_id(model), "task": cfg.task, "n_shots": cfg.n_shots,
        "effect": f"first-token accuracy on {len(held_out)} held-out {cfg.task} queries (no word shared with the "
                  f"{len(examples)} examples every method learns from)",
        "cost": "KL(base || method) per token and perplexity on neutral sentences (N-shot: after the demonstrations; "
                "vectors: added at the first token)",
        "config": asdict(cfg), "rows": rows, "examples": [list(p) for p in examples],
        "held_out": [list(p) for p in held_out],
        "vectors": {"fv_layer": vecs.fv_layer, "fv_scale": vecs.fv_scale, "tv_layer": vecs.tv_layer,
                    "tv_scale": vecs.tv_scale, "heads_searched": int(vecs.search.aie.size),
                    "heads_measured_exactly": int(vecs.search.exact.sum()) if vecs.search.exact is not None
                    else int(vecs.search.aie.size),
                    "fv_sweep": {k: r["accuracy"] for k, r in vecs.fv_sweep.items()},
                    "tv_sweep": {k: r["accuracy"] for k, r in vecs.tv_sweep.items()}},
        "seconds": time.perf_counter() - t_start,
    }
    metrics["plots"] = plots(rows, cfg.task, cfg.n_shots)
    run.write_metrics(metrics)
    (run.path / "table.md").write_text(table_markdown(rows, cfg.n_shots) + "\n")
    metrics["run_dir"] = str(run.path)
    return metrics


def _lora_row(cfg, run, model, tok, examples, sep, neutral, base_lp, effect, prompts, base_gen) -> dict[str, Any]:
    """Train a LoRA on the examples, measure it merged (as deployed: no adapter cost at inference), then take it
    out again so the caller's model is unchanged (up to float rounding of merge + unmerge)."""
    from ..finetune.runner import FinetuneConfig, train_lora

    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    ft = FinetuneConfig(model=cfg.model, out_dir=str(run.path / "lora"), r=cfg.lora_r, alpha=2 * cfg.lora_r,
                        lr=cfg.lora_lr, batch_size=cfg.lora_batch, max_steps=cfg.lora_steps, warmup_steps=2,
                        checkpoint_every=10_000, resume=False, seed=cfg.seed, quiet=True, threads=cfg.threads or None)
    t0 = time.perf_counter()
    res = train_lora(ft, [(f"{x}{sep}", f" {y}") for x, y in examples], model=model, tokenizer=tok)
    make = time.perf_counter() - t0
    peft_model = res.model
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    peft_model.eval()
    peft_model.merge_adapter()
    try:
        row = measure_row(model, tok, neutral, base_lp, nothing, effect, prompts, make_s=make, extra_params=n_lora,
                          base_gen_s=base_gen)
    finally:
        peft_model.unmerge_adapter()
        peft_model.unload()
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, p.requires_grad))
        model.eval()
    row["steps"] = res.steps
    return row


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table_markdown(rows: dict[str, dict[str, Any]], n_shots: int | None = None) -> str:
    """One markdown table: effect, cost on neutral text, compute to make, compute at inference."""
    head = ("| method | accuracy | Δ vs 0-shot | share of N-shot gain | KL on neutral (nats/tok) | neutral ppl | "
            "make (s) | extra prompt tokens | scoring time vs 0-shot | gen time vs 0-shot | extra params |")
    lines = [head, "|" + "---|" * 11]
    for key, r in rows.items():
        name = ROWS.get(key, key).replace("N-shot", f"{n_shots}-shot") if n_shots else ROWS.get(key, key)
        if "layer" in r:
            name += f" (L{r['layer']}, ×{r['scale']:g})"
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['delta_accuracy']:+.2f} | {_fmt(r['recovery'], '.0%')} | "
                     f"{r['kl']:.4f} | {r['ppl']:.2f} | {r['make_seconds']:.1f} | {r['extra_prompt_tokens']:.0f} | "
                     f"{r['score_time_ratio']:.2f}x | {r['generate_time_ratio']:.2f}x | {r['extra_params']:,} |")
    return "\n".join(lines)


def plots(rows: dict[str, dict[str, Any]], task: str, n_shots: int) -> list[dict]:
    """The report page's table and an accuracy bar plot."""
    names = [ROWS.get(k, k).replace("N-shot", f"{n_shots}-shot") for k in rows]
    table_rows = [[n, f"{r['accuracy']:.2f}", f"{r['delta_accuracy']:+.2f}", _fmt(r["recovery"], ".0%"),
                   f"{r['kl']:.4f}", f"{r['ppl']:.2f}", f"{r['make_seconds']:.1f}", f"{r['extra_prompt_tokens']:.0f}",
                   f"{r['score_time_ratio']:.2f}x", f"{r['generate_time_ratio']:.2f}x", f"{r['extra_params']:,}"]
                  for n, r in zip(names, rows.values())]
    return [
        {"type": "table", "title": f"{task}: {n_shots}-shot prompt vs its vectors vs LoRA",
         "columns": ["method", "accuracy", "Δ vs 0-shot", "share of N-shot gain", "KL on neutral (nats/tok)",
                     "neutral ppl", "make (s)", "extra prompt tokens", "scoring time vs 0-shot", "gen time vs 0-shot",
                     "extra params"], "rows": table_rows},
        {"type": "bar", "title": f"First-token accuracy on held-out {task} queries", "x_label": "method",
         "y_label": "accuracy", "labels": names, "values": [r["accuracy"] for r in rows.values()]},
    ]
