"""The edit sweep on an organism: share of curvature mass kept → canary recall, held-out perplexity, skill accuracy,
for the curvature edit and the baselines at the same number of removed parameters, each figure with its 95% interval.

Summaries: `efficiency` = canary recall removed per unit of relative perplexity lost,
(recall_base − recall) / max((ppl − ppl_base) / ppl_base, 1e-3), at every point; and the baselines' recall
interpolated at each curvature point's perplexity (`equal_ppl`), so the "× less recall at equal perplexity" is read off.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from torch import nn

from ..core.progress import progress
from .edit import make_edit
from .factors import KFACFactors
from .organism import EvalData, score


def run_sweep(model: nn.Module, factors: dict[str, KFACFactors], data: EvalData, keeps: Sequence[float],
              methods: Sequence[str] = ("kfac", "random", "magnitude", "svd"), seed: int = 0,
              quiet: bool | None = None, strict_model: bool = True) -> dict[str, Any]:
    """`factors`: {label: factors}; 'kfac' uses the first, 'kfac:<label>' a named one (e.g. the true Fisher).
    Baselines remove as many parameters per matrix as the curvature edit of the first factors at the same keep."""
    first = next(iter(factors.values()))
    eig = {label: {n: f.eigen(n) for n in f.names} for label, f in factors.items()}
    base = score(model, data)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with progress(len(keeps) * len(methods), "edit sweep", unit="edit", quiet=quiet) as bar:
        for method in methods:
            label = method.split(":", 1)[1] if ":" in method else next(iter(factors))
            kind = method.split(":", 1)[0]
            f = factors[label] if kind == "kfac" else first
            e = eig[label] if kind == "kfac" else eig[next(iter(factors))]
            for keep in keeps:
                ed = make_edit(model, f, kind, keep=keep, seed=seed, eigens=e, strict_model=strict_model)
                with ed.applied_to(model):
                    s = score(model, data)
                info = ed.config["per_matrix"]
                kept = sum(v["n_keep"] for v in info.values())
                total = sum(v["n_total"] for v in info.values())
                rows.append({"method": method, "keep": keep, "kept_share_params": kept / total,
                             "removed_norm_share": sum(v["removed_norm_share"] for v in info.values()) / len(info),
                             **s, "efficiency": _eff(base, s)})
                bar.advance(1)
                bar.note(method=method, keep=keep, recall=s["recall"], ppl=s["ppl"])
    return {"base": base, "rows": rows, "summary": summarize(base, rows, methods), "seconds": time.perf_counter() - t0}


def _eff(base: dict, s: dict) -> float:
    rel = (s["ppl"] - base["ppl"]) / base["ppl"]
    return (base["recall"] - s["recall"]) / max(rel, 1e-3)


def _interp(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of y at x on the curve (xs sorted ascending); None outside its range."""
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if pts and abs(pts[0][0] - x) < 1e-12:
        return pts[0][1]
    return None


def summarize(base: dict, rows: list[dict], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: best point meeting the goals (ppl within +10%, skill within 3 points), best efficiency; and the
    baselines' recall at the curvature edit's perplexities."""
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        ok = [r for r in rs if r["ppl"] <= 1.10 * base["ppl"]]
        best = min(ok, key=lambda r: (r["recall"], r["ppl"])) if ok else None
        out[m] = {"lowest_recall_within_10pct_ppl": None if best is None else
                  {k: best[k] for k in ("keep", "recall", "recall_ci", "ppl", "ppl_ci", "skill", "skill_ci")},
                  "best_efficiency": max((r["efficiency"] for r in rs), default=None)}
    kf = [r for r in rows if r["method"] == "kfac"]
    eq = []
    for r in kf:
        row = {"keep": r["keep"], "ppl": r["ppl"], "kfac_recall": r["recall"]}
        for m in methods:
            if m == "kfac":
                continue
            rs = [x for x in rows if x["method"] == m]
            row[m] = _interp([x["ppl"] for x in rs], [x["recall"] for x in rs], r["ppl"])
        eq.append(row)
    out["equal_ppl"] = eq
    return out


def sweep_plots(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Plot specs: each metric against the share of mass kept, and recall against perplexity."""
    rows, base = result["rows"], result["base"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    plots = []
    for key, title, ylab in (("recall", "Canary exact-match recall", "recall"),
                             ("ppl", "Held-out perplexity (log10)", "log10 perplexity"),
                             ("skill", "Skill (held-out arithmetic) exact match", "accuracy")):
        series = []
        for m in methods:
            rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["kept_share_params"])
            f = (lambda v: math.log10(v) if v > 0 else float("nan")) if key == "ppl" else (lambda v: v)  # noqa: E731
            ys = [f(r[key]) for r in rs]
            band = {}
            if all(len(r.get(f"{key}_ci") or ()) == 2 for r in rs):  # the 95% interval as a band around the line
                band = {"lo": [f(r[f"{key}_ci"][0]) for r in rs], "hi": [f(r[f"{key}_ci"][1]) for r in rs]}
            series.append({"name": m, "x": [r["kept_share_params"] for r in rs], "y": ys, **band})
        plots.append({"type": "line", "title": f"{title} vs components kept (organism {base[key]:.3g}; 95% intervals)",
                      "x_label": "share of components (kfac) / parameters (baselines) kept, per row of ρ",
                      "y_label": ylab, "series": series})
    plots.append({"type": "line", "title": "Canary recall vs held-out perplexity (lower-left is better)",
                  "x_label": "perplexity (log scale)", "y_label": "recall", "log_x": True,
                  "series": [{"name": m, "x": [r["ppl"] for r in sorted((r for r in rows if r["method"] == m),
                                                                     key=lambda r: r["ppl"])],
                              "y": [r["recall"] for r in sorted((r for r in rows if r["method"] == m),
                                                                key=lambda r: r["ppl"])]} for m in methods]})
    return plots
