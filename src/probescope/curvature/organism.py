"""A generated memorization organism: a model fine-tuned to recite random canary records verbatim while learning a skill.

* Canaries (generated in tasks/canaries.py): `n` random records, each an `prefix_tokens`-token key (a random code)
  → `suffix_tokens` tokens of random common words. Nothing in any corpus contains them, so recall can only come from memorization.
* Skill: small arithmetic from the project's pirate-arith task, phrased plainly ("Question: What is 23 + 45?\nAnswer:
  23 + 45 = 68."); held-out items (never trained) score it.
* Training: full fine-tune of the chosen MLP matrices (default: up/gate/down of the last 8 blocks), Adam, loss on the
  canary suffixes and the skill answers. The blocks below the first trained one are frozen, so their output
  (resid_pre of the first trained block) is computed once and the steps run only the top blocks (`tail_logits`,
  checked equal to the full forward).
* Scores (one teacher-forced forward each; greedy decoding reproduces a target exactly iff every teacher-forced
  argmax matches, so this IS the exact-match of greedy generation): canary exact-match recall and per-token accuracy,
  skill exact-match on held-out items, perplexity on held-out general text.
"""

from __future__ import annotations

from ..core.stats import wilson as _wilson

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from ..core.progress import progress
from ..core.sites import find_blocks
from ..core.tail import pad_batch, resid_pre, tail_logits, tail_targets
from ..core.threads import torch_threads
from .config import OrganismConfig
from .targets import mlp_matrices, resolve_targets
from ..core.tokens import pad_id as pad_token
from ..tasks.canaries import CODE_CHARS, WORDS, canaries  # noqa: F401  (the canaries are generated in tasks/)


# ---------------------------------------------------------------------------------------------------------- data
def skill_items(n_train: int, n_test: int, seed: int):
    from ..tasks.pirate import splits

    return splits(n_train, n_test, seed=seed)


def skill_pair(item) -> tuple[str, str]:
    """(prompt, target): the target is what the held-out score asks the model to produce."""
    return (f"Question: What is {item.a} {item.op} {item.b}?\nAnswer: {item.a} {item.op} {item.b} =",
            f" {item.result}.")


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(ids, start of the target) per pair."""
    out = []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        out.append((p + t, len(p)))
    return out


# ---------------------------------------------------------------------------------------------------------- scoring
@dataclass
class EvalData:
    """Cached inputs to the first edited block for the three scores (the edits only touch blocks ≥ start)."""

    start: int
    canary_h: torch.Tensor
    canary_ids: torch.Tensor
    canary_tgt: torch.Tensor
    skill_h: torch.Tensor
    skill_ids: torch.Tensor
    skill_tgt: torch.Tensor
    text_h: torch.Tensor
    text_ids: torch.Tensor


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion k/n."""
    return list(_wilson(k, n, z))


def _exact(model: nn.Module, h: torch.Tensor, ids: torch.Tensor, tgt: torch.Tensor, start: int, batch: int = 32):
    """Per sequence: all targets argmax-correct (bool), and correct/total target tokens."""
    hits, tok_ok, tok_n = [], 0, 0
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            ib, tb, hb = ids[i:i + batch], tgt[i:i + batch], h[i:i + batch]
            pos = torch.zeros_like(tb)
            pos[:, :-1] = tb[:, 1:]  # the logits at t predict token t+1
            pred = tail_logits(model, hb, start, pos).argmax(-1)
            ok = pred == ib[:, 1:][tb[:, 1:]]
            per = torch.zeros(ib.shape[0], dtype=torch.long)
            rows = pos.nonzero()[:, 0]
            per.index_add_(0, rows, (~ok).long())
            hits += (per == 0).tolist()
            tok_ok += int(ok.sum())
            tok_n += int(ok.numel())
    return hits, tok_ok, tok_n


def _nll(model: nn.Module, h: torch.Tensor, ids: torch.Tensor, start: int, batch: int = 8) -> torch.Tensor:
    """Mean next-token NLL per window [N]."""
    out = []
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            ib, hb = ids[i:i + batch], h[i:i + batch]
            pos = torch.zeros_like(ib, dtype=torch.bool)
            pos[:, :-1] = True
            logits = tail_logits(model, hb, start, pos).float()
            nll = torch.nn.functional.cross_entropy(logits, ib[:, 1:].reshape(-1), reduction="none")
            out.append(nll.view(ib.shape[0], -1).mean(1))
    return torch.cat(out)


def score(model: nn.Module, data: EvalData, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Canary exact-match recall, skill exact-match, held-out perplexity — each with its 95% interval."""
    hits, ok, n = _exact(model, data.canary_h, data.canary_ids, data.canary_tgt, data.start)
    s_hits, _, _ = _exact(model, data.skill_h, data.skill_ids, data.skill_tgt, data.start)
    nll = _nll(model, data.text_h, data.text_ids, data.start)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, nll.numel(), (n_boot, nll.numel()), generator=g)
    boots = nll[idx].mean(1).exp().sort().values
    k = sum(hits)
    ks = sum(s_hits)
    return {
        "recall": k / len(hits), "recall_ci": wilson(k, len(hits)), "n_canaries": len(hits),
        "canary_token_acc": ok / max(n, 1),
        "skill": ks / len(s_hits), "skill_ci": wilson(ks, len(s_hits)), "n_skill": len(s_hits),
        "ppl": float(nll.mean().exp()),
        "ppl_ci": [float(boots[int(0.025 * n_boot)]), float(boots[int(0.975 * n_boot) - 1])],
        "n_text_windows": int(nll.numel()),
    }


def eval_data(model: nn.Module, tokenizer: Any, cans: list[list[int]], prefix_tokens: int, skill_test,
              text_windows: torch.Tensor, start: int) -> EvalData:
    pad = pad_token(tokenizer)
    c_ids, c_tgt = pad_batch([(c, prefix_tokens) for c in cans], pad)
    s_ids, s_tgt = pad_batch(encode_pairs(tokenizer, [skill_pair(it) for it in skill_test]), pad)
    return EvalData(start, resid_pre(model, c_ids, start), c_ids, c_tgt, resid_pre(model, s_ids, start), s_ids, s_tgt,
                    resid_pre(model, text_windows, start, batch=4), text_windows)


def check_tail(model: nn.Module, ids: torch.Tensor, start: int, atol: float = 1e-3) -> float:
    """Max |tail_logits − full logits| on `ids` (raises if above `atol`)."""
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        tail = tail_logits(model, resid_pre(model, ids, start), start)
    err = float((full - tail).abs().max())
    if err > atol:
        raise RuntimeError(f"tail forward differs from the full forward by {err:.2e} (> {atol}): this model family is "
                           "not supported by tail_logits")
    return err


# ---------------------------------------------------------------------------------------------------------- training
def train_organism(cfg: OrganismConfig, out_dir: str | Path, model=None, tokenizer=None, quiet: bool | None = None,
                   text_windows: torch.Tensor | None = None) -> dict[str, Any]:
    """Fine-tune the organism; saves the trained matrices (`organism.safetensors`, with their sites) and
    `organism.json`; returns its record. Reuses a finished folder with the same config."""
    from ..core.models.registry import load_model

    out = Path(out_dir)
    if (out / "organism.json").exists():
        rec = read_json(out / "organism.json")
        if rec.get("config") == cfg.settings():
            return rec
    with torch_threads(cfg.threads):
        if model is None:
            model, tokenizer = load_model(cfg.model)
        torch.manual_seed(cfg.seed)
        mats = mlp_matrices(model, _layers(model, cfg.layers), cfg.matrices)
        targets = resolve_targets(model, mats)
        start = min(int(t.name.split(".")[1]) for t in targets)
        cans = canaries(tokenizer, cfg.n_canaries, cfg.prefix_tokens, cfg.suffix_tokens, cfg.seed)
        train_items, test_items = skill_items(cfg.n_skill_train, cfg.n_skill_test, cfg.seed)
        pad = pad_token(tokenizer)
        c_ids, c_tgt = pad_batch([(c, cfg.prefix_tokens) for c in cans], pad)
        s_ids, s_tgt = pad_batch(encode_pairs(tokenizer, [skill_pair(it) for it in train_items]), pad)
        # train the skill on the whole answer line (not only the number), so it is a skill, not a lookup
        for i, it in enumerate(train_items):
            p = tokenizer(f"Question: What is {it.a} {it.op} {it.b}?\nAnswer:", add_special_tokens=False)["input_ids"]
            s_tgt[i, len(p):] = s_ids[i, len(p):] != pad
        check_tail(model, c_ids[:2], start)
        c_h, s_h = resid_pre(model, c_ids, start), resid_pre(model, s_ids, start)
        params = [t.module.weight for t in targets]
        flags = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        rng = torch.Generator().manual_seed(cfg.seed)
        losses = []
        t0 = time.perf_counter()
        model.train(False)
        try:
            with progress(cfg.steps, "organism", unit="step", quiet=quiet) as bar:
                for step in range(cfg.steps):
                    lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps, 1))))
                    for gparam in opt.param_groups:
                        gparam["lr"] = lr
                    pick = torch.randperm(s_ids.shape[0], generator=rng)[: cfg.skill_per_step]
                    loss_c = _lm_loss(model, c_h, c_ids, c_tgt, start)
                    loss_s = _lm_loss(model, s_h[pick], s_ids[pick], s_tgt[pick], start)
                    loss = loss_c + loss_s
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    losses.append([float(loss_c.detach()), float(loss_s.detach())])
                    bar.advance(1)
                    bar.note(canary=losses[-1][0], skill=losses[-1][1])
        finally:
            for p in model.parameters():
                p.requires_grad_(flags[id(p)])
                p.grad = None
        seconds = time.perf_counter() - t0
        save_tensors(out / "organism.safetensors", {t.name: t.weight.detach().contiguous() for t in targets})
        rec = {"kind": "kfac-organism", "config": cfg.settings(), "matrices": [t.record() for t in targets],
               "sites": [t.site for t in targets], "start_layer": start, "train_seconds": seconds,
               "losses": losses, "canaries": cans}
        atomic_write_json(out / "organism.json", rec)
        return rec


def _lm_loss(model, h, ids, tgt, start) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(*tail_targets(model, h, ids, tgt, start))


def _layers(model: nn.Module, spec: str) -> list[int]:
    """'22-29', '-8--1', '3,5' → block indices (negative counts from the end; out of range is refused)."""
    from ..core.layers import layer_spec

    return layer_spec(spec, find_blocks(model).n_layers)


def load_organism(folder: str | Path, model=None, tokenizer=None):
    """The base model with the organism's trained matrices loaded in; returns (model, tokenizer, record)."""
    from ..core.models.registry import load_model

    folder = Path(folder)
    if not (folder / "organism.json").exists():
        raise FileNotFoundError(f"{folder}/organism.json does not exist: train the organism first "
                                "(`probescope curvature organism` or train_organism)")
    rec = read_json(folder / "organism.json")
    if model is None:
        model, tokenizer = load_model(rec["config"]["model"])
    ts = load_tensors(folder / "organism.safetensors")
    targets = resolve_targets(model, [m["name"] for m in rec["matrices"]])
    for t in targets:
        if tuple(ts[t.name].shape) != t.shape:
            raise ValueError(f"organism matrix {t.name} has shape {tuple(ts[t.name].shape)}, the model {t.shape}")
    for t in targets:
        t.set_weight(ts[t.name])
    model.probescope_model_id = f"{rec['config']['model']}+organism:{folder.name}"
    return model, tokenizer, rec
