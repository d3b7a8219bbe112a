"""Measure a steering vector: behaviour shift (word-list sentiment of generations) vs cost (KL and perplexity on
neutral text), over a multiplier sweep; results in a run folder (metrics.json with the series, sweep.svg)."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.capture import tokenize
from .jobs import EvalConfig
from .pairs import eval_prompts, neutral_texts, sentiment_score


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batch); returns only the new text."""
    enc = tokenize(tokenizer, prompts, padding_side="left")
    dev = next(model.parameters()).device
    out = model.generate(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                         max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def behaviour(texts: Sequence[str]) -> dict[str, float]:
    """Mean word-list sentiment score and the rate of clearly positive / negative texts."""
    s = [sentiment_score(t) for t in texts]
    return {"sentiment": sum(s) / len(s), "positive_rate": sum(v > 0 for v in s) / len(s),
            "negative_rate": sum(v < 0 for v in s) / len(s)}


@torch.no_grad()
def text_logprobs(model: nn.Module, tokenizer: Any, texts: Sequence[str], prefix: str | None = None) -> list[torch.Tensor]:
    """Per text, log-probabilities `[n - 1, V]` predicting its tokens 2..n (after `prefix` when given).

    The text is tokenized on its own, so with and without a prefix the same tokens are predicted.
    """
    dev = next(model.parameters()).device
    pre = tokenizer(prefix)["input_ids"] if prefix else None
    out = []
    for t in texts:
        body = tokenizer(t, add_special_tokens=False)["input_ids"]
        ids = (pre + body) if pre is not None else tokenizer(t)["input_ids"]
        start = len(ids) - len(body)
        logits = model(input_ids=torch.tensor([ids], device=dev), use_cache=False).logits[0].float()
        out.append(F.log_softmax(logits[start : len(ids) - 1], -1).cpu())
    return out


def cost(base: list[torch.Tensor], new: list[torch.Tensor], texts_ids: list[torch.Tensor] | None = None) -> dict[str, float]:
    """KL(base ‖ new) per token (nats) and the perplexity of the actual next tokens under `new`."""
    kls, nll, n = [], 0.0, 0
    for b, q, ids in zip(base, new, texts_ids or [None] * len(base)):
        kls.append((b.exp() * (b - q)).sum(-1).mean().item())
        if ids is not None:
            nll -= q.gather(-1, ids[:, None]).sum().item()
            n += ids.shape[0]
    res = {"kl": sum(kls) / len(kls)}
    if n:
        res["ppl"] = math.exp(nll / n)
    return res


def next_token_ids(tokenizer: Any, texts: Sequence[str]) -> list[torch.Tensor]:
    """The tokens that `text_logprobs` predicts, per text."""
    return [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"][1:]) for t in texts]


def measure(model: nn.Module, tokenizer: Any, prompts: Sequence[str], neutral: Sequence[str],
            base_lp: list[torch.Tensor], ctx: Callable[[], ContextManager], max_new_tokens: int,
            prefix: str | None = None, gen_prompts: Sequence[str] | None = None) -> dict[str, Any]:
    """Behaviour and cost of one intervention: `ctx()` is entered around generation and the neutral forwards."""
    with ctx():
        t0 = time.perf_counter()
        gens = generate(model, tokenizer, gen_prompts or prompts, max_new_tokens)
        gen_s = time.perf_counter() - t0
        lp = text_logprobs(model, tokenizer, neutral, prefix=prefix)
    res = behaviour(gens)
    res.update(cost(base_lp, lp, next_token_ids(tokenizer, neutral)))
    res["generate_seconds"] = gen_s
    res["samples"] = gens
    return res


def sweep(vector: Any, model: nn.Module, tokenizer: Any, config: EvalConfig | None = None) -> dict[str, Any]:
    """Behaviour and cost at each multiplier; returns the metrics dict (series keyed by metric name)."""
    cfg = config or EvalConfig()
    if not cfg.multipliers:
        raise ValueError("no multipliers to sweep: pass e.g. multipliers=(-4, 0, 4)")
    prompts = eval_prompts(tokenizer, cfg.n_prompts, cfg.seed)
    neutral = neutral_texts(cfg.n_neutral)
    base_lp = text_logprobs(model, tokenizer, neutral)
    rows = []
    for m in cfg.multipliers:
        ctx = (lambda m=m: vector.apply(model, multiplier=m, positions=cfg.positions, mode=cfg.mode))
        rows.append(measure(model, tokenizer, prompts, neutral, base_lp, ctx, cfg.max_new_tokens))
    keys = ["sentiment", "positive_rate", "negative_rate", "kl", "ppl", "generate_seconds"]
    base_ppl = cost(base_lp, base_lp, next_token_ids(tokenizer, neutral))["ppl"]
    return {
        "kind": "steering-eval",
        "behaviour": "sentiment (word-list score of greedy generations on held-out neutral prompts)",
        "cost": "KL(base || steered) per token and perplexity on neutral factual sentences",
        "layers": vector.layers, "method": vector.meta.get("method"), "positions": cfg.positions, "mode": cfg.mode,
        "multipliers": list(cfg.multipliers),
        "series": {k: [r[k] for r in rows] for k in keys},
        "base_ppl": base_ppl,
        "samples": {str(m): r["samples"][: cfg.samples_kept] for m, r in zip(cfg.multipliers, rows)},
    }


def run_eval(vector: Any, model: nn.Module, tokenizer: Any, out: str, config: EvalConfig | None = None) -> dict[str, Any]:
    """`sweep`, then write `config.json`, `metrics.json` and `sweep.svg` into the run folder `out`."""
    from ..report.runs import RunDir
    from .plot import sweep_svg, write_svg

    cfg = config or EvalConfig()
    run = RunDir(out, kind="steering-eval")
    run.write_config(cfg)
    metrics = sweep(vector, model, tokenizer, cfg)
    run.write_metrics(metrics)
    s = metrics["series"]
    svg = sweep_svg(metrics["multipliers"], [
        ("behaviour", {"sentiment score": s["sentiment"], "positive rate": s["positive_rate"]}),
        ("cost", {"KL (nats/token)": s["kl"]}),
    ], title=f"steering sweep, layers {metrics['layers']}")
    write_svg(run.file("sweep.svg"), svg)
    metrics["run_dir"] = str(run.path)
    return metrics


@contextlib.contextmanager
def nothing():
    """A context manager that does nothing (the unsteered baseline)."""
    yield
