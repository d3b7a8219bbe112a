"""Attacks that show whether an unlearned model really forgot, each reported as "knowledge recovered":
(attacked − unlearned) / (before − unlearned) forget accuracy, with a paired bootstrap interval.

* `relearn`: LoRA fine-tuning for N steps on (a) half of the held-out forget facts, scoring the other half, or
  (b) unrelated retain text only; N a sweep (default 5, 20, 100). The same fine-tune on the base model is the
  control beside it.
* `probe_layers`: a linear probe at every layer reads whether a capital statement is true (right city vs a
  distractor), grouped cross-validation by entity; before vs after.
* `direction_removal`: the misdirection direction at layer L (last-token mean of unlearned − original activations on
  the forget *training* prompts) projected out at ℓ+1, or at each of ℓ+1..ℓ+k, then the held-out facts re-scored
  (with retain accuracy and perplexity, which show what the edit costs).
"""

from __future__ import annotations

import copy
import random
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.capture import capture
from ..core.hooks import project_out
from ..core.progress import progress
from ..core.sites import n_layers, site_hooks
from .methods import lm_loss
from .score import acc_summary, cloze_correct, doc_nlls, ppl_summary, recovered, wilson
from .subjects import ClozeItem
from .train import make_batches


def _lora(model: nn.Module, r: int, seed: int) -> nn.Module:
    from ..finetune.runner import FinetuneConfig, add_lora

    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    return add_lora(m, FinetuneConfig(r=r, alpha=2 * r, seed=seed))


def relearn_curve(model: nn.Module, tok: Any, texts: Sequence[str], items: Sequence[ClozeItem],
                  steps: Sequence[int], lr: float = 1e-4, r: int = 8, seed: int = 0, batch_size: int = 10,
                  quiet: bool = True, desc: str = "relearn", max_len: int = 32) -> dict[int, list[bool]]:
    """Per-item correctness of `items` after LoRA fine-tuning on `texts` (each cut at `max_len` tokens) for each N in
    `steps` (one run, scored at each N; constant lr, AdamW). The model itself is left untouched (a copy is trained)."""
    steps = sorted(set(int(s) for s in steps))
    m = _lora(model, r, seed)
    m.eval()
    batches = make_batches(tok, texts, batch_size, max_len, seed)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    out: dict[int, list[bool]] = {}
    if 0 in steps:
        out[0] = cloze_correct(m, tok, items)
    with progress(max(steps), desc, unit="step", quiet=quiet) as bar:
        for s in range(1, max(steps) + 1):
            loss = lm_loss(m, batches[(s - 1) % len(batches)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.advance(1)
            if s in steps:
                out[s] = cloze_correct(m, tok, items)
    return out


def relearn(unlearned: nn.Module, base: nn.Module, tok: Any, forget_eval: Sequence[ClozeItem],
            before: Sequence[bool], after: Sequence[bool], unrelated: Sequence[str], steps: Sequence[int] = (5, 20, 100),
            lr: float = 1e-4, seed: int = 0, quiet: bool = True, control: dict | None = None,
            max_len: int = 32) -> dict[str, Any]:
    """Both relearning attacks with the control on the base model; `control` reuses earlier control curves (made
    with the same steps, lr and `max_len`). Texts are cut at `max_len` tokens: a step costs a forward and backward
    of the whole model per token, and the attack is about the number of steps on short sentences."""
    idx = list(range(len(forget_eval)))
    random.Random(seed).shuffle(idx)
    half = len(idx) // 2
    a_idx, b_idx = sorted(idx[:half]), sorted(idx[half:])
    train_a = [forget_eval[i].statement() for i in a_idx]
    score_b = [forget_eval[i] for i in b_idx]
    setups = {
        "half_forget": (train_a, score_b, b_idx,
                        f"LoRA on {len(train_a)} of the held-out forget facts; the other {len(score_b)} scored"),
        "unrelated": (list(unrelated), list(forget_eval), list(range(len(forget_eval))),
                      f"LoRA on {len(unrelated)} unrelated retain texts; all {len(forget_eval)} held-out facts scored"),
    }
    control = dict(control or {})
    out: dict[str, Any] = {"steps": list(steps), "lr": lr, "max_len": max_len}
    for name, (texts, items, sel, what) in setups.items():
        curve = relearn_curve(unlearned, tok, texts, items, steps, lr=lr, seed=seed, quiet=quiet, desc=f"relearn {name}",
                              max_len=max_len)
        if name not in control:
            control[name] = {str(k): v for k, v in
                             relearn_curve(base, tok, texts, items, steps, lr=lr, seed=seed, quiet=quiet,
                                           desc=f"control {name}", max_len=max_len).items()}
        b = [before[i] for i in sel]
        a = [after[i] for i in sel]
        rows = []
        for n in steps:
            rec = recovered(b, a, curve[n], seed=seed)
            ctl = control[name][str(n)]
            rows.append({"steps": n, **rec, "control_acc": float(np.mean(ctl)), "control": acc_summary(ctl),
                         "attacked": acc_summary(curve[n])})
        out[name] = {"what": what, "before": acc_summary(b), "after": acc_summary(a), "rows": rows}
    out["_control"] = control
    return out


# ------------------------------------------------------------------------------------------------------------
# Probes
# ------------------------------------------------------------------------------------------------------------


def truth_statements(items: Sequence[ClozeItem], seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(statements, labels, groups): per item its true statement and one with a distractor."""
    rng = random.Random(seed)
    texts, y, g = [], [], []
    for i, it in enumerate(items):
        if not it.distractors:
            continue
        texts += [f"{it.prompt} {it.answer}.", f"{it.prompt} {rng.choice(it.distractors)}."]
        y += [1, 0]
        g += [i, i]
    return texts, np.array(y), np.array(g)


def probe_layers(model: nn.Module, tok: Any, items: Sequence[ClozeItem], layers: Sequence[int] | None = None,
                 folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Grouped cross-validated accuracy (by entity) of a logistic-regression probe at each layer's last token."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    texts, y, groups = truth_statements(items, seed)
    if len(texts) < 2 * folds:
        raise ValueError(f"too few facts ({len(items)}) for a {folds}-fold probe: give at least {folds}")
    layers = list(layers) if layers is not None else list(range(n_layers(model)))
    cap = capture(model, texts, layers, tokenizer=tok, positions="last", batch_size=32)
    out = {}
    for layer in layers:
        X = cap[layer].float().numpy() if not isinstance(cap, dict) else cap[layer].float().numpy()
        right = 0
        for tr, te in GroupKFold(n_splits=folds).split(X, y, groups):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            clf.fit(X[tr], y[tr])
            right += int((clf.predict(X[te]) == y[te]).sum())
        lo, hi = wilson(right, len(y))
        out[str(layer)] = {"site": f"resid_post.{layer}", "acc": right / len(y), "lo": lo, "hi": hi, "n": len(y)}
    return out


# ------------------------------------------------------------------------------------------------------------
# Direction removal
# ------------------------------------------------------------------------------------------------------------


def misdirection(unlearned: nn.Module, base: nn.Module, tok: Any, prompts: Sequence[str], layers: Sequence[int]
                 ) -> dict[int, torch.Tensor]:
    """Per layer: last-token mean of (unlearned − original) activations on `prompts`."""
    cu = capture(unlearned, list(prompts), list(layers), tokenizer=tok, positions="last", batch_size=32)
    cb = capture(base, list(prompts), list(layers), tokenizer=tok, positions="last", batch_size=32)
    return {layer: (cu[layer].float() - cb[layer].float()).mean(0) for layer in layers}


def direction_removal(unlearned: nn.Module, base: nn.Module, tok: Any, train_items: Sequence[ClozeItem],
                      forget_eval: Sequence[ClozeItem], retain_eval: Sequence[ClozeItem], utility: Sequence[str],
                      before: Sequence[bool], after: Sequence[bool], layer: int, spans: Sequence[int] = (1, 4),
                      seed: int = 0, sources: Sequence[str] = ("train", "scored")) -> dict[str, Any]:
    """Project the misdirection out at ℓ+1..ℓ+k for each k in `spans` and re-score (forget, retain, perplexity).

    The direction is estimated without labels from the prompts alone: on the forget *training* prompts ("train"),
    or on the scored prompts themselves ("scored": what an attacker holding the questions, not the answers, can do).
    """
    n = n_layers(unlearned)
    ks = [k for k in spans if layer + 1 < n]
    all_layers = sorted({layer + j for k in ks for j in range(1, k + 1) if layer + j < n})
    prompts = {"train": [it.prompt for it in train_items] or [it.prompt for it in forget_eval],
               "scored": [it.prompt for it in forget_eval]}
    out: dict[str, Any] = {"estimated_on": {"train": f"last token of {len(prompts['train'])} forget-training prompts",
                                            "scored": f"last token of the {len(forget_eval)} scored prompts (no answers)"},
                           "rows": []}
    for src in sources:
        dirs = misdirection(unlearned, base, tok, prompts[src], all_layers) if all_layers else {}
        for k in ks:
            at = [layer + j for j in range(1, k + 1) if layer + j < n]
            edits = {f"resid_post.{a}": project_out(dirs[a]) for a in at}
            with site_hooks(unlearned, edits):
                f = cloze_correct(unlearned, tok, forget_eval)
                r = cloze_correct(unlearned, tok, retain_eval) if retain_eval else []
                u = ppl_summary(doc_nlls(unlearned, tok, utility, max_len=64)) if utility else None
            out["rows"].append({"source": src, "sites": [f"resid_post.{a}" for a in at], "k": k,
                                **recovered(before, after, f, seed=seed), "retain": acc_summary(r) if r else None,
                                "utility": u, "direction_norms": [float(dirs[a].norm()) for a in at]})
    return out
