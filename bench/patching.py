"""Patching benchmark: probescope's batched activation patching and attribution patching vs nnsight, same cells.

    python bench/patching.py [--quick] --json bench/results/patching.json

SmolLM2-135M on generated indirect-object pairs ("When Mary and John went to the store, John gave a drink to"
→ " Mary" vs " John"; the corrupted prompt names the other person second). Metric: logit difference at the last
token, averaged over the pairs. Grids: resid_pre (layer × position), attn_head (layer × head), mlp_out (layer).

nnsight patches each cell the idiomatic way, one trace per cell over the batch of pairs (resid_pre: the block's
input at one position; attn_head: the head's slice of o_proj's input, which is exactly patching that head's
contribution; mlp_out: the MLP's output). Both run in one process, one after the other, with the same threads;
figures are ratios. Equal effects: max abs diff of the normalised effect ≤ 1e-4.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from _common import machine, parser, write_json

FAMILIES = ("resid_pre", "attn_head", "mlp_out")


def nnsight_grid(lm, pairs, metric_fn, family: str, layers: list[int], n_heads: int, head_dim: int) -> tuple[np.ndarray, float]:
    """The same normalised-effect grid by nnsight, one trace per cell."""
    import torch

    clean, corrupt = pairs.clean, pairs.corrupt
    P, T = clean.shape
    t0 = time.perf_counter()
    saved: dict = {}
    with torch.no_grad():
        with lm.trace(clean):
            for L in layers:
                layer = lm.model.layers[L]
                saved[L] = {"resid_pre": layer.input.save(), "attn_head": layer.self_attn.o_proj.input.save(),
                            "mlp_out": layer.mlp.output.save()}[family]
            lc = lm.output.logits.save()
        with lm.trace(corrupt):
            lk = lm.output.logits.save()
        m_clean, m_corr = float(metric_fn(lc).mean()), float(metric_fn(lk).mean())
        cols = T if family == "resid_pre" else (n_heads if family == "attn_head" else 1)
        out = np.zeros((len(layers), cols))
        for i, L in enumerate(layers):
            src = saved[L]
            for j in range(cols):
                with lm.trace(corrupt):
                    layer = lm.model.layers[L]
                    if family == "resid_pre":
                        layer.input[:, j] = src[:, j]
                    elif family == "attn_head":
                        sl = slice(j * head_dim, (j + 1) * head_dim)
                        layer.self_attn.o_proj.input[:, :, sl] = src[:, :, sl]
                    else:
                        layer.mlp.output[:] = src
                    lg = lm.output.logits.save()
                out[i, j] = (float(metric_fn(lg).mean()) - m_corr) / (m_clean - m_corr)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="grids to measure, e.g. attn_head,mlp_out")
    ap.add_argument("--merge", action="store_true", help="keep the other families already in --json")
    args = ap.parse_args()
    import torch
    from nnsight import LanguageModel

    from probescope.core.models import load_model
    from probescope.core.sites import head_weight, n_heads, n_layers
    from probescope.patching import activation_patching, agreement, attribution_patching, logit_diff
    from probescope.patching.tasks import ioi_texts, tokenize_pairs

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    n_pairs = 4 if args.quick else 8
    pairs = tokenize_pairs(tok, ioi_texts(n_pairs, 0, tok))
    metric = logit_diff(pairs.answer_ids, pairs.wrong_ids)
    nl = n_layers(model)
    layers = list(range(0, nl, 4)) if args.quick else list(range(nl))
    nh = n_heads(model)
    _, hd = head_weight(model, 0)
    lm = LanguageModel(model, tokenizer=tok)
    a_ids = torch.tensor(pairs.answer_ids)
    w_ids = torch.tensor(pairs.wrong_ids)

    def nn_metric(logits):
        last = logits[:, -1]
        r = torch.arange(last.shape[0])
        return last[r, a_ids] - last[r, w_ids]

    res: dict = {"bench": "patching", "model": "smollm2-135m", "quick": args.quick, "machine": machine(),
                 "task": "ioi", "pairs": n_pairs, "tokens": int(pairs.clean.shape[1]), "layers": layers,
                 "example": list(pairs.texts[0]), "families": {}}
    fams = [f for f in args.families.split(",") if f]
    if args.merge and Path(args.json_path).exists():
        old = json.loads(Path(args.json_path).read_text())
        res["families"] = {k: {**v, "measured_in_earlier_run": True} for k, v in old.get("families", {}).items()
                           if k not in fams}
    for fam in fams:
        ours = activation_patching(model, pairs.clean, pairs.corrupt, metric, fam, layers=layers, batch_size=64)
        attr = attribution_patching(model, pairs.clean, pairs.corrupt, metric, fam, layers=layers)
        peer, peer_s = nnsight_grid(lm, pairs, nn_metric, fam, layers, nh, hd)
        diff = float(np.abs(ours.values - peer).max())
        res["families"][fam] = {
            "cells": int(ours.values.size),
            "probescope_exact_seconds": ours.seconds, "probescope_forwards": ours.forwards,
            "nnsight_seconds": peer_s, "nnsight_forwards": int(ours.values.size) + 3,
            "exact_speedup_vs_nnsight": peer_s / ours.seconds,
            "max_abs_diff_vs_nnsight": diff, "equal_effects": diff <= 1e-4,
            "attribution_seconds": attr.seconds, "attribution_speedup_vs_exact": ours.seconds / attr.seconds,
            "agreement": agreement(ours, attr),
            "clean_metric": ours.clean_metric, "corrupt_metric": ours.corrupt_metric,
            "top_cells_exact": _top(ours, 5),
            "grid_exact": np.round(ours.values, 4).tolist(), "grid_attribution": np.round(attr.values, 4).tolist(),
            "rows": ours.rows, "cols": ours.cols,
        }
        print(fam, {k: v for k, v in res["families"][fam].items() if not k.startswith(("grid", "rows", "cols"))},
              flush=True)
    heads = res["families"].get("attn_head", {"attribution_speedup_vs_exact": float("nan")})
    res["demands"] = {
        "exact_no_slower_than_nnsight": all(f["exact_speedup_vs_nnsight"] >= 1.0 for f in res["families"].values()),
        "equal_effects_all": all(f["equal_effects"] for f in res["families"].values()),
        "attribution_10x_on_head_grid": heads["attribution_speedup_vs_exact"] >= 10.0,
    }
    write_json(args.json_path, res)


def _top(grid, k: int) -> list[dict]:
    flat = np.argsort(-np.abs(grid.values).ravel())[:k]
    out = []
    for f in flat:
        i, j = np.unravel_index(int(f), grid.values.shape)
        out.append({"row": grid.rows[i], "col": grid.cols[j], "effect": round(float(grid.values[i, j]), 4)})
    return out


if __name__ == "__main__":
    main()
