"""Scores: 4-way log-probability cloze accuracy, perplexity, and their intervals.

A cloze item is right when its answer's summed log-probability after the prompt (`prompt` + " " + choice) beats
every distractor's. Intervals: Wilson 95% for an accuracy; percentile bootstrap (seeded, 1000 resamples) for
perplexity and for "knowledge recovered".
"""

from __future__ import annotations

from ..core.stats import wilson as _wilson

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .subjects import ClozeItem
from ..core.tokens import pad_id as pad_token

Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials."""
    return _wilson(k, n, z)


def acc_summary(correct: Sequence[bool]) -> dict[str, Any]:
    n = len(correct)
    k = float(sum(bool(c) for c in correct))
    lo, hi = wilson(k, n)
    return {"acc": k / n if n else float("nan"), "lo": lo, "hi": hi, "n": n}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device



def _token_logprobs(model: nn.Module, ids: torch.Tensor, att: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """[B, T] log-probability of token t+1 at each position t where `sel` (0 elsewhere); logits only where needed."""
    from ..core.sites import unwrap

    hf = unwrap(model)
    hidden = hf.base_model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    s = sel[:, :-1]
    logits = hf.get_output_embeddings()(hidden[:, :-1][s]).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    tgt = ids[:, 1:][s]
    out = torch.zeros(s.shape, dtype=torch.float32, device=ids.device)
    out[s] = torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return out


@torch.no_grad()
def continuation_logprobs(model: nn.Module, tok: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 32
                          ) -> list[float]:
    """Summed log-probability of each `cont` after `prompt` (`prompt` tokens, then " " + cont's tokens)."""
    seqs: list[tuple[list[int], int]] = []
    for prompt, cont in pairs:
        p = tok(prompt)["input_ids"]
        c = tok(" " + cont, add_special_tokens=False)["input_ids"]
        if not c:
            raise ValueError(f"the answer {cont!r} tokenizes to nothing")
        seqs.append((p + c, len(p)))
    out: list[float] = []
    dev, pad = _device(model), pad_token(tok)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    res = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(seqs[i][0])
            ids[r, :n] = torch.tensor(seqs[i][0])
            att[r, :n] = 1
        sel = torch.zeros((len(idx), T), dtype=torch.bool)  # positions that predict an answer token
        for r, i in enumerate(idx):
            full, n_p = seqs[i]
            sel[r, n_p - 1:len(full) - 1] = True
        lp = _token_logprobs(model, ids.to(dev), att.to(dev), sel.to(dev))
        for r, i in enumerate(idx):
            res[i] = float(lp[r].sum())
    out.extend(res)
    return out


def cloze_correct(model: nn.Module, tok: Any, items: Sequence[ClozeItem], batch_size: int = 32) -> list[bool]:
    """Per item: is the answer the most likely of its choices?"""
    if not items:
        raise ValueError("no cloze items to score")
    pairs, spans = [], []
    for it in items:
        ch = it.choices()
        spans.append((len(pairs), len(ch)))
        pairs.extend((it.prompt, c) for c in ch)
    was = model.training
    model.eval()
    try:
        lps = continuation_logprobs(model, tok, pairs, batch_size)
    finally:
        model.train(was)
    out = []
    for s, n in spans:
        v = lps[s:s + n]
        out.append(bool(v[0] > max(v[1:])) if n > 1 else True)
    return out


def chance(items: Sequence[ClozeItem]) -> float:
    """Expected accuracy of a random pick among each item's choices."""
    return float(np.mean([1.0 / len(it.choices()) for it in items])) if items else float("nan")


@torch.no_grad()
def doc_nlls(model: nn.Module, tok: Any, texts: Sequence[str], max_len: int = 128, batch_size: int = 8
             ) -> list[tuple[float, int]]:
    """(summed next-token NLL, tokens) per text, first `max_len` tokens."""
    dev, pad = _device(model), pad_token(tok)
    out = []
    was = model.training
    model.eval()
    try:
        for s in range(0, len(texts), batch_size):
            enc = [tok(t)["input_ids"][:max_len] for t in texts[s:s + batch_size]]
            T = max(len(e) for e in enc)
            ids = torch.full((len(enc), T), pad, dtype=torch.long)
            att = torch.zeros((len(enc), T), dtype=torch.long)
            for r, e in enumerate(enc):
                ids[r, :len(e)] = torch.tensor(e)
                att[r, :len(e)] = 1
            att = att.to(dev)
            nll = -_token_logprobs(model, ids.to(dev), att, att.bool())
            m = att[:, 1:].float()
            for r in range(len(enc)):
                out.append((float((nll[r] * m[r]).sum()), int(m[r].sum())))
    finally:
        model.train(was)
    return out


def ppl_summary(nlls: Sequence[tuple[float, int]], seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Perplexity over all tokens, with a bootstrap interval over documents."""
    a = np.array([x for x, _ in nlls])
    b = np.array([n for _, n in nlls], dtype=float)
    ppl = float(np.exp(a.sum() / b.sum()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boots = np.exp(a[idx].sum(1) / b[idx].sum(1))
    return {"ppl": ppl, "lo": float(np.percentile(boots, 2.5)), "hi": float(np.percentile(boots, 97.5)),
            "n_docs": len(a), "tokens": int(b.sum())}


def recovered(before: Sequence[bool], after: Sequence[bool], attacked: Sequence[bool], seed: int = 0,
              n_boot: int = 1000) -> dict[str, Any]:
    """Share of the forget accuracy lost that the attack brings back: (attacked − after) / (before − after).

    Paired bootstrap over items for the interval; NaN when unlearning lost nothing.
    """
    b, a, t = (np.asarray(x, dtype=float) for x in (before, after, attacked))
    if not (len(b) == len(a) == len(t)):
        raise ValueError("before/after/attacked must score the same items")

    def share(bb, aa, tt):
        gap = bb.mean() - aa.mean()
        return float((tt.mean() - aa.mean()) / gap) if gap > 1e-9 else float("nan")

    val = share(b, a, t)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(n_boot, len(b)))
    boots = np.array([share(b[i], a[i], t[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    lo, hi = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if len(boots) else (float("nan"),) * 2
    return {"recovered": val, "lo": lo, "hi": hi, "acc": float(t.mean()), "n": len(t)}


def evaluate(model: nn.Module, tok: Any, forget: Sequence[ClozeItem], retain: Sequence[ClozeItem],
             utility_texts: Sequence[str], max_len: int = 128, edit: Callable[[], Any] | None = None,
             task: Sequence[ClozeItem] = ()) -> dict[str, Any]:
    """Forget/retain (and, if given, a named task's) accuracy, per item and summary, and perplexity on
    `utility_texts`; `edit()` wraps scoring."""
    from contextlib import nullcontext

    ctx = edit() if edit is not None else nullcontext()
    with ctx:
        f = cloze_correct(model, tok, forget)
        r = cloze_correct(model, tok, retain) if retain else []
        t = cloze_correct(model, tok, task) if task else []
        u = doc_nlls(model, tok, utility_texts, max_len=max_len) if utility_texts else []
    out: dict[str, Any] = {"forget": {**acc_summary(f), "correct": f, "chance": chance(forget)}}
    if retain:
        out["retain"] = {**acc_summary(r), "correct": r, "chance": chance(retain)}
    if task:
        out["task"] = {**acc_summary(t), "correct": t, "chance": chance(task)}
    if u:
        out["utility"] = ppl_summary(u)
    return out
