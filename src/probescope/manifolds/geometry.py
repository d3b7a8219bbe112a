"""The shape of a concept at one layer: mean activation per value, PCA, a circle or a curve through the means.

Definitions (fixed; tests pin them):
- means: the mean activation of each value's examples, `[K, d]`; PCA of the K means (centred), top `k` axes.
- circle (cyclic concepts, period P): θ = 2πv/P; the means' PCA coordinates z fitted as z ≈ c + A·(cos θ, sin θ)
  by least squares (an ellipse through known angles). `r2`: in the k-dim PCA space; `r2_plane`: in the best
  pair of the top-k PCA axes (the pair chosen by R²). R² = 1 − Σ‖z − ẑ‖² / Σ‖z − z̄‖².
- curve (ordinal concepts): z ≈ B(v)·W with B a cubic B-spline basis of the value (interior knots at quantiles),
  the "manifold probe"; a point's value is read as the nearest point of the curve (a dense grid of values).
- loo: leave one value out: refit on the other K−1 means (PCA too) and read the held-out mean; the error is the
  angle error in degrees (circle) or the value error (curve), mean over values.
- cv: two folds of examples: fit on one fold's means, read every example of the other; mean error per example.
- dims90: PCA axes of the means needed for 90% of their variance.
- probe: held-out R² of a linear (ridge) read-out from single examples' activations, two folds (λ picked inside
  each training fold): of the value (ordinal concepts) or of (cos θ, sin θ) (cyclic ones).
- baseline: the same numbers with the values shuffled across examples (`n_shuffles` draws, fixed seed): is there
  any structure by value at all?
- baseline_order: the same numbers with the values permuted as wholes (every example of value u relabelled π(u),
  `n_shuffles` draws of π): the per-value clusters stay, their order along the shape is random. This asks whether
  the *order* is a circle (a curve), not merely that K distinct clusters exist — with K = 7 points in 5 axes, the
  best plane fits a random order with R² ≈ 0.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np


def value_means(X: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, [K, d] mean activation per value)."""
    vals = np.unique(v)
    return vals, np.stack([X[v == u].mean(0) for u in vals])


def pca(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre [d], top-k axes [k, d] orthonormal rows, variance ratio of every axis) of the rows of M."""
    mu = M.mean(0)
    Mc = M - mu
    if len(Mc) < Mc.shape[1]:  # few means in many dimensions: from the small Gram matrix (LAPACK's SVD is 20× slower)
        lam, U = np.linalg.eigh(Mc @ Mc.T)
        lam, U = np.clip(lam[::-1], 0, None), U[:, ::-1]
        s = np.sqrt(lam)
        kk = min(k, len(s))
        if kk and s[kk - 1] > 1e-6 * s[0]:
            ratio = lam / lam.sum()
            return mu, (U[:, :kk].T @ Mc) / s[:kk, None], ratio
    _, s, vt = np.linalg.svd(Mc, full_matrices=False)
    var = s ** 2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    return mu, vt[:k], ratio


def dims_for(ratio: np.ndarray, share: float = 0.9) -> int:
    """Number of leading axes whose variance ratios reach `share`."""
    return int(np.searchsorted(np.cumsum(ratio), share - 1e-12) + 1) if len(ratio) else 0


def r2_score(Z: np.ndarray, Zhat: np.ndarray) -> float:
    tot = float(((Z - Z.mean(0)) ** 2).sum())
    return 1.0 - float(((Z - Zhat) ** 2).sum()) / tot if tot > 0 else 0.0


def _angles(v: np.ndarray, period: int) -> np.ndarray:
    return 2 * np.pi * np.asarray(v, dtype=np.float64) / period


def _design(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(theta), np.cos(theta), np.sin(theta)], 1)


@dataclass
class Circle:
    """A circle (ellipse) in the k-dim PCA space of one layer: x ↦ z = U(x − mu); z ≈ c + A·(cos θ, sin θ)."""

    mu: np.ndarray      # [d]
    U: np.ndarray       # [k, d], orthonormal rows
    c: np.ndarray       # [k]
    A: np.ndarray       # [k, 2]
    period: int
    r2: float = float("nan")

    def point(self, theta: np.ndarray | float, strength: float = 1.0) -> np.ndarray:
        """The residual-space point(s) at angle θ (radius scaled by `strength`): [..., d]."""
        th = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        e = np.stack([np.cos(th), np.sin(th)], -1)
        p = self.mu + (self.c + strength * e @ self.A.T) @ self.U
        return p if np.ndim(theta) else p[0]

    def coords(self, X: np.ndarray) -> np.ndarray:
        """(cos, sin)-space read-out of points X [N, d] (least squares through A): [N, 2]."""
        Z = (np.atleast_2d(X) - self.mu) @ self.U.T - self.c
        return Z @ np.linalg.pinv(self.A).T

    def angle(self, X: np.ndarray) -> np.ndarray:
        """The angle (radians, in [0, 2π)) each point reads as."""
        e = self.coords(X)
        a = np.mod(np.arctan2(e[:, 1], e[:, 0]), 2 * np.pi)
        return np.where(a >= 2 * np.pi, 0.0, a)  # mod of a tiny negative angle rounds up to 2π

    def value(self, X: np.ndarray) -> np.ndarray:
        """The (fractional) value each point reads as."""
        return self.angle(X) * self.period / (2 * np.pi)

    def plane(self) -> np.ndarray:
        """Orthonormal basis [d, 2] of the circle's plane in the residual space (span of Uᵀ A)."""
        q, _ = np.linalg.qr(self.U.T @ self.A)
        return q


def fit_circle(M: np.ndarray, vals: np.ndarray, period: int, k: int) -> Circle:
    """The circle through the means `M` [K, d] of values `vals`, in their top-k PCA space."""
    mu, U, _ = pca(M, k)
    Z = (M - mu) @ U.T
    D = _design(_angles(vals, period))
    W, *_ = np.linalg.lstsq(D, Z, rcond=None)
    return Circle(mu, U, W[0], W[1:].T, period, r2_score(Z, D @ W))


def circle_plane_r2(M: np.ndarray, vals: np.ndarray, period: int, k: int) -> tuple[float, tuple[int, int]]:
    """Best circle R² over the pairs of the top-k PCA axes, and that pair."""
    mu, U, _ = pca(M, k)
    Z = (M - mu) @ U.T
    D = _design(_angles(vals, period))
    best = (-np.inf, (0, 1))
    for i, j in combinations(range(Z.shape[1]), 2):
        Zp = Z[:, [i, j]]
        W, *_ = np.linalg.lstsq(D, Zp, rcond=None)
        r = r2_score(Zp, D @ W)
        if r > best[0]:
            best = (r, (i, j))
    return float(best[0]), best[1]


def _circ_err_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.mod(a - b + np.pi, 2 * np.pi) - np.pi
    return np.abs(d) * 180 / np.pi


def circle_loo(M: np.ndarray, vals: np.ndarray, period: int, k: int) -> float:
    """Leave-one-value-out angle error (degrees, mean over values)."""
    errs = []
    for i in range(len(vals)):
        keep = np.arange(len(vals)) != i
        c = fit_circle(M[keep], vals[keep], period, min(k, int(keep.sum()) - 1))
        errs.append(_circ_err_deg(c.angle(M[i:i + 1]), _angles(vals[i:i + 1], period))[0])
    return float(np.mean(errs))


# ----------------------------------------------------------------------------------------------------------
# Curves: the manifold probe for ordinal concepts
# ----------------------------------------------------------------------------------------------------------


def _spline_basis(x: np.ndarray, lo: float, hi: float, n_knots: int) -> np.ndarray:
    from scipy.interpolate import BSpline

    inner = np.linspace(lo, hi, n_knots + 2)[1:-1]
    t = np.r_[[lo] * 4, inner, [hi] * 4]
    return BSpline.design_matrix(np.clip(np.asarray(x, dtype=np.float64), lo, hi), t, 3).toarray()


@dataclass
class Curve:
    """A cubic-spline curve v ↦ mu + (B(v) W) U in the k-dim PCA space of one layer."""

    mu: np.ndarray      # [d]
    U: np.ndarray       # [k, d]
    W: np.ndarray       # [n_basis, k]
    lo: float
    hi: float
    n_knots: int
    r2: float = float("nan")

    def point(self, v: np.ndarray | float) -> np.ndarray:
        B = _spline_basis(np.atleast_1d(v), self.lo, self.hi, self.n_knots)
        p = self.mu + (B @ self.W) @ self.U
        return p if np.ndim(v) else p[0]

    def value(self, X: np.ndarray, grid: int = 400) -> np.ndarray:
        """The value of the nearest point of the curve (within the fitted range), per row of X."""
        g = np.linspace(self.lo, self.hi, grid)
        C = _spline_basis(g, self.lo, self.hi, self.n_knots) @ self.W
        Z = (np.atleast_2d(X) - self.mu) @ self.U.T
        d = ((Z[:, None, :] - C[None]) ** 2).sum(-1)
        return g[d.argmin(1)]


def n_knots_for(n_values: int) -> int:
    """Interior knots: about one per four values, 0 to 6 (a cubic has 4 + knots coefficients per axis)."""
    return int(max(0, min(6, (n_values - 4) // 4)))


def fit_curve(M: np.ndarray, vals: np.ndarray, k: int, n_knots: int | None = None) -> Curve:
    """The spline curve through the means `M` [K, d] of values `vals`, in their top-k PCA space."""
    mu, U, _ = pca(M, k)
    Z = (M - mu) @ U.T
    nk = n_knots_for(len(vals)) if n_knots is None else n_knots
    lo, hi = float(vals.min()), float(vals.max())
    B = _spline_basis(vals, lo, hi, nk)
    W, *_ = np.linalg.lstsq(B, Z, rcond=None)
    return Curve(mu, U, W, lo, hi, nk, r2_score(Z, B @ W))


def curve_loo(M: np.ndarray, vals: np.ndarray, k: int) -> float:
    """Leave-one-value-out value error (mean absolute, over the interior values: the ends would extrapolate)."""
    errs = []
    for i in range(1, len(vals) - 1):
        keep = np.arange(len(vals)) != i
        c = fit_curve(M[keep], vals[keep], min(k, int(keep.sum()) - 1), n_knots_for(len(vals)))
        errs.append(abs(float(c.value(M[i:i + 1])[0]) - float(vals[i])))
    return float(np.mean(errs)) if errs else float("nan")


# ----------------------------------------------------------------------------------------------------------
# One layer: every score, and the same scores on shuffled values
# ----------------------------------------------------------------------------------------------------------


def two_folds(v: np.ndarray, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """Two folds with every value in both (alternating within each value's shuffled examples); with `groups` (the
    text each example was read from, when texts give several), whole groups alternate between the folds instead, so
    no text is read on both sides (the folds then do not depend on the values)."""
    if groups is not None:
        g, inv = np.unique(groups, return_inverse=True)
        side = np.zeros(len(g), dtype=int)
        side[rng.permutation(len(g))[1::2]] = 1
        return side[inv]
    f = np.zeros(len(v), dtype=int)
    for u in np.unique(v):
        idx = np.flatnonzero(v == u)
        f[rng.permutation(idx)[1::2]] = 1
    return f


def scores(X: np.ndarray, v: np.ndarray, period: int | None, k: int, seed: int = 0,
           groups: np.ndarray | None = None) -> dict[str, float]:
    """The shape scores of one layer (see the module doc) for activations X [N, d] and values v [N]; `groups`: the
    text of each example, when several come from one text (the folds then keep each text on one side)."""
    vals, M = value_means(X, v)
    kk = max(1, min(k, len(vals) - 1))
    _, _, ratio = pca(M, kk)
    out: dict[str, Any] = {"dims90": dims_for(ratio), "var_top": [float(r) for r in ratio[:kk]]}
    folds = two_folds(v, np.random.default_rng(seed), groups)
    errs = []
    if period:
        c = fit_circle(M, vals, period, kk)
        out["r2"] = c.r2
        out["r2_plane"], out["plane"] = circle_plane_r2(M, vals, period, kk)
        out["loo"] = circle_loo(M, vals, period, kk)
        for f in (0, 1):
            tr, te = folds == f, folds != f
            vt, Mt = value_means(X[tr], v[tr])
            ct = fit_circle(Mt, vt, period, min(kk, len(vt) - 1))
            errs.append(_circ_err_deg(ct.angle(X[te]), _angles(v[te], period)))
    else:
        c = fit_curve(M, vals, kk)
        out["r2"] = c.r2
        out["loo"] = curve_loo(M, vals, kk)
        for f in (0, 1):
            tr, te = folds == f, folds != f
            vt, Mt = value_means(X[tr], v[tr])
            ct = fit_curve(Mt, vt, min(kk, len(vt) - 1), n_knots_for(len(vals)))
            errs.append(np.abs(ct.value(X[te]) - v[te]))
    out["cv"] = float(np.concatenate(errs).mean())
    out["probe"] = probe_r2(X, readout_target(v, period), folds, groups)
    return out


RIDGE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # λ as a multiple of the mean eigenvalue of the centred Gram matrix


_EIGEN: dict[tuple, tuple] = {}  # (X's identity and fingerprint, rows) → its eigendecomposition; a few kept


def _eigen(X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, bool]:
    """(x mean, eigenvalues, eigenvectors, mean eigenvalue s, primal?) of the centred X[rows]: of XcᵀXc [d, d] when
    there are more rows than dimensions (primal), else of XcXcᵀ [n, n] (dual). Kept for the last few (X, rows): the
    shuffled-value baselines refit the same rows with other targets."""
    key = (id(X), X.shape, float(X[::max(1, len(X) // 7)].sum()), hash(rows.tobytes()))
    if key not in _EIGEN:
        Xr = X[rows]
        mx = Xr.mean(0)
        Xc = Xr - mx
        primal = len(Xc) > Xc.shape[1]
        lam, vec = np.linalg.eigh(Xc.T @ Xc if primal else Xc @ Xc.T)
        lam = np.clip(lam, 0, None)
        if len(_EIGEN) >= 8:
            _EIGEN.pop(next(iter(_EIGEN)))
        _EIGEN[key] = (mx, lam, vec, max(float(lam.sum()) / len(Xc), 1e-12), primal)
    return _EIGEN[key]


def _ridge_path(X: np.ndarray, Y: np.ndarray, tr: np.ndarray, te: np.ndarray, lams: tuple) -> list[float]:
    """Held-out R² on `te` of ridge fitted on `tr`, for each λ of `lams` (a multiple of the mean eigenvalue of the
    centred Gram matrix): W = (XcᵀXc + λsI)⁻¹XcᵀYc = Xcᵀ(XcXcᵀ + λsI)⁻¹Yc, from one eigendecomposition."""
    mx, ev, V, scale, primal = _eigen(X, tr)
    my = Y[tr].mean(0)
    Xc, Xt = X[tr] - mx, X[te] - mx
    if primal:
        b = V.T @ (Xc.T @ (Y[tr] - my))
        return [r2_score(Y[te], my + Xt @ (V @ (b / (ev + lam * scale)[:, None]))) for lam in lams]
    b = V.T @ (Y[tr] - my)
    P = Xt @ Xc.T @ V
    return [r2_score(Y[te], my + P @ (b / (ev + lam * scale)[:, None])) for lam in lams]


def readout_target(v: np.ndarray, period: int | None) -> np.ndarray:
    """What the linear read-out predicts from the values: (cos θ, sin θ) of a cyclic value, the value itself else."""
    if period:
        return np.stack([np.cos(_angles(v, period)), np.sin(_angles(v, period))], 1)
    return v[:, None].astype(float)


def probe_r2(X: np.ndarray, Y: np.ndarray, folds: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Held-out R² of a linear (ridge) read-out of Y from X over the two folds, mean of the two; λ chosen inside
    each training fold (a half split of it; by whole `groups` when given) from `RIDGE`, so the held-out fold never
    picks it."""
    out = []
    for f in (0, 1):
        tr, te = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        half = np.zeros(len(tr), dtype=bool)
        if groups is None:
            half[1::2] = True
        else:
            g, inv = np.unique(groups[tr], return_inverse=True)
            half = (np.arange(len(g)) % 2 == 1)[inv]
        inner = _ridge_path(X, Y, tr[~half], tr[half], RIDGE)
        out.append(_ridge_path(X, Y, tr, te, (RIDGE[int(np.argmax(inner))],))[0])
    return float(np.mean(out))


SCORE_KEYS = ("r2", "r2_plane", "loo", "cv", "probe")


def _against(real: dict[str, Any], draws: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """(mean, 95th percentile — the 5th for errors —, p with the +1 rule) of each score over the draws."""
    base, p95, p = {}, {}, {}
    for key in SCORE_KEYS:
        if key not in real:
            continue
        xs = np.array([d[key] for d in draws])
        lower_better = key in ("loo", "cv")
        base[key] = float(xs.mean()) if len(xs) else float("nan")
        p95[key] = float(np.percentile(xs, 5 if lower_better else 95)) if len(xs) else float("nan")
        better = (xs <= real[key]) if lower_better else (xs >= real[key])
        p[key] = float((1 + better.sum()) / (1 + len(xs)))
    return base, p95, p


def layer_report(X: np.ndarray, v: np.ndarray, period: int | None, k: int, n_shuffles: int = 5,
                 seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Scores of one layer beside the same scores with the values shuffled across examples, and with the values
    permuted as wholes (see the module doc).

    `baseline[key]` is the mean over shuffles, `baseline_p95[key]` the 95th percentile (the 5th for errors), and
    `p[key]` the share of shuffles at least as good as the real values (with the +1 rule); `baseline_order`,
    `baseline_order_p95` and `p_order` the same for the value permutations."""
    real = scores(X, v, period, k, seed, groups)
    rng = np.random.default_rng(seed + 1)
    draws = [scores(X, rng.permutation(v), period, k, seed, groups) for _ in range(n_shuffles)]
    base, p95, p = _against(real, draws)
    vals = np.unique(v)
    order = []
    for _ in range(n_shuffles):
        pi = dict(zip(vals.tolist(), rng.permutation(vals).tolist()))
        order.append(scores(X, np.array([pi[u] for u in v.tolist()]), period, k, seed, groups))
    obase, op95, op = _against(real, order)
    return {**real, "baseline": base, "baseline_p95": p95, "p": p, "baseline_order": obase,
            "baseline_order_p95": op95, "p_order": op}


def readout_report(X: np.ndarray, v: np.ndarray, period: int | None, n_shuffles: int, seed: int = 0,
                   groups: np.ndarray | None = None) -> dict[str, Any]:
    """The held-out linear read-out (`probe`, as in `scores`) of the value from X — e.g. several layers' residuals
    side by side — beside the same read-out with the values shuffled across examples (mean, 95th percentile, p)."""
    folds = two_folds(v, np.random.default_rng(seed), groups)
    real = probe_r2(X, readout_target(v, period), folds, groups)
    rng = np.random.default_rng(seed + 1)
    draws = np.array([probe_r2(X, readout_target(rng.permutation(v), period), folds, groups)
                      for _ in range(n_shuffles)])
    return {"probe": real, "baseline": float(draws.mean()), "baseline_p95": float(np.percentile(draws, 95)),
            "p": float((1 + (draws >= real).sum()) / (1 + len(draws)))}
