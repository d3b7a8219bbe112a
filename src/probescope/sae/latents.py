"""What each latent responds to: firing frequency, top-activating contexts, and a short label from its tokens."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write_json, read_json
from .core import SAE
from ..core.sites import read_sites, resolve_site

LATENTS_FILE = "latents.json"


@torch.no_grad()
def latent_stats(
    sae: SAE,
    model: Any,
    tokenizer: Any,
    input_ids: torch.Tensor,
    top_n: int = 8,
    window: int = 6,
    batch_size: int = 8,
    latents: list[int] | None = None,
) -> dict[str, Any]:
    """Per latent: frequency (fraction of tokens it fires on), max activation, top contexts and top tokens.

    `input_ids` [B, T] are fixed-length contexts (e.g. `store.make_contexts`); position 0 is skipped when
    it is BOS. Returns a JSON-ready dict {"n_tokens", "latents": {id: {...}}}.
    """
    sae.eval()
    m = sae.n_latents
    chosen = torch.arange(m) if latents is None else torch.tensor(latents)
    count = torch.zeros(m, dtype=torch.long)
    best_val = torch.full((m, top_n), -1.0)
    best_pos = torch.zeros((m, top_n, 2), dtype=torch.long)
    n_tok = 0
    bos = getattr(tokenizer, "bos_token_id", None)
    for s in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[s : s + batch_size]
        site = resolve_site(model, sae.cfg.hook_in)
        acts = read_sites(model, ids, torch.ones_like(ids), [site])[site]
        b, t, d = acts.shape
        dense = sae.encode(acts.reshape(-1, d)).dense().float().cpu()  # [b·t, M]
        if bos is not None:
            dense.view(b, t, m)[:, 0][ids[:, 0] == bos] = 0
        count += (dense > 0).sum(0)
        n_tok += b * t
        k = min(top_n, dense.shape[0])
        vals, rows = dense.topk(k, dim=0)  # [k, M]
        pos = torch.stack([rows // t + s, rows % t], -1)  # [k, M, 2]
        allv = torch.cat([best_val, vals.T], 1)
        allp = torch.cat([best_pos, pos.transpose(0, 1)], 1)
        top = allv.topk(top_n, dim=1).indices
        best_val = allv.gather(1, top)
        best_pos = allp.gather(1, top[..., None].expand(-1, -1, 2))
    out: dict[str, Any] = {"n_tokens": n_tok, "hook": sae.cfg.hook_in, "latents": {}}
    for j in chosen.tolist():
        contexts = []
        for v, (row, p) in zip(best_val[j].tolist(), best_pos[j].tolist()):
            if v <= 0:
                continue
            lo = max(0, p - window)
            ctx_ids = input_ids[row, lo : p + 1].tolist()
            contexts.append({
                "activation": round(v, 4),
                "token": tokenizer.decode([input_ids[row, p].item()]),
                "context": tokenizer.decode(ctx_ids[:-1]),
                "row": row, "pos": p,
            })
        out["latents"][str(j)] = {
            "frequency": count[j].item() / max(1, n_tok),
            "max_activation": max(0.0, best_val[j, 0].item()),
            "top_contexts": contexts,
            "top_tokens": [tok for tok, _ in Counter(c["token"] for c in contexts).most_common(5)],
        }
    for j, rec in out["latents"].items():
        rec["label"] = explain_record(rec)
    return out


def explain_record(rec: dict[str, Any], max_tokens: int = 3) -> str:
    """A short label from a latent's record: its most common top tokens, or "dead" / "dense"."""
    if not rec.get("top_contexts"):
        return "dead (never fired)"
    weight: Counter[str] = Counter()
    for c in rec["top_contexts"]:
        weight[c["token"].strip() or repr(c["token"])] += c["activation"]
    toks = [t for t, _ in weight.most_common(max_tokens)]
    label = " / ".join(repr(t) if not t.isprintable() else t for t in toks)
    if rec.get("frequency", 0) > 0.2:
        label += " (dense: fires on >20% of tokens)"
    return label


def save_latent_stats(stats: dict[str, Any], run: str | Path) -> Path:
    """Write `latents.json` into the run folder."""
    return atomic_write_json(Path(run) / LATENTS_FILE, stats)


def explain(latent: int, stats: dict[str, Any] | str | Path) -> str:
    """Short label of `latent` from stats (a dict from `latent_stats`, or a run folder / latents.json path)."""
    if not isinstance(stats, dict):
        p = Path(stats)
        stats = read_json(p / LATENTS_FILE if p.is_dir() else p)
    rec = stats["latents"].get(str(latent))
    if rec is None:
        raise KeyError(f"latent {latent} is not in these stats (they cover {len(stats['latents'])} latents)")
    return rec.get("label") or explain_record(rec)
