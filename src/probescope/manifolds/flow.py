"""Following a concept's manifold from layer to layer (issue #32 item 4, first part).

For consecutive layers a → b of a `find` run: each layer's per-value means give a k-dim PCA space (k = min(k,
values − 1)); every example is put in both spaces, Z_a and Z_b [N, k]. Then
- the linear map Z_b ≈ [1, Z_a]·W by least squares over the examples (N ≫ k, so it is not a trivial fit of the
  K means), with its two-fold held-out R² on single examples (`r2_examples`) and the R² with which the mapped
  per-value means of a reproduce b's (`r2_shape`: how much of the next layer's shape the map explains), each
  beside the same fit with the examples' pairing across layers shuffled (`baseline_*`: mean of the draws);
- the principal angles (degrees, ascending) between the two layers' fitted circle planes in the residual space
  (for an ordinal concept: between the means' top-2 PCA planes); `rotation` is the largest. A plane turned by φ
  about a line it shares with the other gives angles (0, φ); a circle turned within its own plane gives (0, 0) —
  principal angles see where the plane moves, not a turn inside it. `split_half_rotation` is the largest angle
  between layer b's planes fitted on the two halves of the examples: a plane estimated from half the examples is
  √2 noisier, so this is about √2 × the noise in an angle between two layers' full-sample planes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .geometry import fit_circle, pca, r2_score, value_means


def principal_angles(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between the column spans of A [d, p] and B [d, q]."""
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.degrees(np.arccos(np.clip(s, -1.0, 1.0))))


def _plane(M: np.ndarray, vals: np.ndarray, period: int | None, k: int) -> np.ndarray:
    if period:
        return fit_circle(M, vals, period, k).plane()
    return pca(M, 2)[1].T


def _fit(Za: np.ndarray, Zb: np.ndarray) -> np.ndarray:
    D = np.c_[np.ones(len(Za)), Za]
    W, *_ = np.linalg.lstsq(D, Zb, rcond=None)
    return W


def _apply(W: np.ndarray, Z: np.ndarray) -> np.ndarray:
    return np.c_[np.ones(len(Z)), Z] @ W


def _scores(Za: np.ndarray, Zb: np.ndarray, v: np.ndarray, vals: np.ndarray, folds: np.ndarray,
            perm: np.ndarray | None = None) -> tuple[float, float]:
    """(held-out R² on examples, R² of b's per-value means from a's mapped): the map is fitted to the pairs
    (Za, Zb[perm]); the shape is always scored against b's real means."""
    Zt = Zb if perm is None else Zb[perm]
    pred = np.empty_like(Zb)
    for f in (0, 1):
        tr = folds != f
        pred[~tr] = _apply(_fit(Za[tr], Zt[tr]), Za[~tr])
    W = _fit(Za, Zt)
    Ma = np.stack([Za[v == u].mean(0) for u in vals])
    Mb = np.stack([Zb[v == u].mean(0) for u in vals])
    return r2_score(Zt, pred), r2_score(Mb, _apply(W, Ma))


def layer_step(Xa: np.ndarray, Xb: np.ndarray, v: np.ndarray, period: int | None, k: int, n_shuffles: int = 10,
               seed: int = 0) -> dict[str, Any]:
    """The map from layer a's per-value-mean PCA space to layer b's, its R²s and the planes' principal angles."""
    if Xa.shape[1] != Xb.shape[1]:
        raise ValueError(f"the layers have widths {Xa.shape[1]} and {Xb.shape[1]}: principal angles need one space")
    vals, Ma = value_means(Xa, v)
    _, Mb = value_means(Xb, v)
    kk = max(2, min(k, len(vals) - 1))
    mua, Ua, _ = pca(Ma, kk)
    mub, Ub, _ = pca(Mb, kk)
    Za, Zb = (Xa - mua) @ Ua.T, (Xb - mub) @ Ub.T
    rng = np.random.default_rng(seed)
    folds = rng.permutation(len(v)) % 2
    r2_ex, r2_shape = _scores(Za, Zb, v, vals, folds)
    base = np.array([_scores(Za, Zb, v, vals, folds, rng.permutation(len(v))) for _ in range(n_shuffles)])
    ang = principal_angles(_plane(Ma, vals, period, kk), _plane(Mb, vals, period, kk))
    halves = []  # the noise floor: layer b's plane from each half of the examples (each value in both halves)
    for f in (0, 1):
        sel = folds == f
        if set(np.unique(v[sel])) != set(vals):
            break
        u, M = value_means(Xb[sel], v[sel])
        halves.append(_plane(M, u, period, kk))
    split = float(principal_angles(*halves)[-1]) if len(halves) == 2 else float("nan")
    return {"split_half_rotation": split, "r2_examples": r2_ex, "r2_shape": r2_shape, "baseline_r2_examples": float(base[:, 0].mean()),
            "baseline_r2_shape": float(base[:, 1].mean()), "baseline_r2_shape_p95": float(np.percentile(base[:, 1], 95)),
            "angles": [float(a) for a in ang], "rotation": float(ang[-1]), "k": kk}


def layer_flow(acts: dict[int, np.ndarray], v: np.ndarray, period: int | None, k: int, n_shuffles: int = 10,
               seed: int = 0) -> list[dict[str, Any]]:
    """`layer_step` for each pair of consecutive layers in `acts` (in layer order)."""
    Ls = sorted(acts)
    return [{"from": int(a), "to": int(b), **layer_step(acts[a].astype(np.float64), acts[b].astype(np.float64), v,
                                                          period, k, n_shuffles, seed)}
            for a, b in zip(Ls, Ls[1:])]


def flow_plots(flow: list[dict], concept: str, cyclic: bool) -> list[dict]:
    """Line plots over layers (x: the later layer of each step)."""
    if not flow:
        return []
    xs = [f["to"] for f in flow]
    what = "circle planes" if cyclic else "top-2 PCA planes of the means"
    return [
        {"type": "line", "title": f"{concept}: principal angles between consecutive layers' {what}",
         "x_label": "layer (step from the previous layer read)", "y_label": "angle (°)",
         "series": [{"name": "largest (rotation)", "x": xs, "y": [f["rotation"] for f in flow]},
                    {"name": "smallest", "x": xs, "y": [f["angles"][0] for f in flow]},
                    {"name": "split-half noise (largest)", "x": xs, "y": [f["split_half_rotation"] for f in flow]}]},
        {"type": "line", "title": f"{concept}: how much of each layer's shape the linear map from the previous "
                                   "layer explains", "x_label": "layer (step from the previous layer read)",
         "y_label": "R²", "series": [{"name": "shape (per-value means)", "x": xs, "y": [f["r2_shape"] for f in flow]},
                                     {"name": "single examples, held out", "x": xs,
                                      "y": [f["r2_examples"] for f in flow]},
                                     {"name": "shape, pairing shuffled (95th pct)", "x": xs,
                                      "y": [f["baseline_r2_shape_p95"] for f in flow]}]},
    ]
