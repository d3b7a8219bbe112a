"""Probe metrics, one module: accuracy, AUROC (binary / macro one-vs-rest), F1, ECE, recall at a fixed FPR, and a
monitor's g-mean² (TPR × TNR at a threshold set on validation) with bootstrap intervals.

`probs` is `[N]` (probability of class 1) for binary tasks or `[N, C]` (rows summing to 1) for multi-class.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _check(probs: np.ndarray, labels: np.ndarray) -> None:
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} predictions for {len(labels)} labels: they must have equal length")
    if len(labels) == 0:
        raise ValueError("no examples to score: the evaluation set is empty")
    if not np.isfinite(probs).all():
        raise ValueError("predictions contain NaN/inf: the probe diverged; lower the learning rate or raise weight decay")


def _full(probs: np.ndarray) -> np.ndarray:
    """[N, C] class probabilities from [N] (binary) or [N, C]."""
    return np.stack([1 - probs, probs], 1) if probs.ndim == 1 else probs


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose most likely class is the label."""
    p, y = _np(probs), _np(labels).astype(int)
    _check(p, y)
    return float((_full(p).argmax(1) == y).mean())


def binary_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when only one class is present."""
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each run of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return [0.0] + (fp / n_neg).tolist(), [0.0] + (tp / n_pos).tolist()


def roc_series(probs: Any, labels: Any, classes: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Line-chart series of the ROC curve (binary) or one curve per class, one-vs-rest (multi-class)."""
    p, y = _np(probs), _np(labels).astype(int)
    if p.ndim == 1:
        x, t = roc_curve(p, y)
        return [{"name": f"AUROC {binary_auroc(p, y):.3f}", "x": x, "y": t}]
    out = []
    for c in range(p.shape[1]):
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            x, t = roc_curve(p[:, c], yc)
            name = str(classes[c]) if classes is not None else str(c)
            out.append({"name": f"{name} vs rest ({binary_auroc(p[:, c], yc):.3f})", "x": x, "y": t})
    return out


def auroc(probs: Any, labels: Any) -> float:
    """Binary AUROC, or the macro average of one-vs-rest AUROCs for [N, C] probabilities."""
    p, y = _np(probs), _np(labels).astype(int)
    if p.ndim == 1:
        return binary_auroc(p, y)
    vals = [binary_auroc(p[:, c], (y == c).astype(int)) for c in range(p.shape[1])]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def f1(probs: Any, labels: Any) -> float:
    """F1 of class 1 (binary), or macro F1 over classes."""
    p, y = _np(probs), _np(labels).astype(int)
    _check(p, y)
    pred = _full(p).argmax(1)
    classes = [1] if p.ndim == 1 else range(p.shape[1])
    out = []
    for c in classes:
        tp = float(((pred == c) & (y == c)).sum())
        fp = float(((pred == c) & (y != c)).sum())
        fn = float(((pred != c) & (y == c)).sum())
        out.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(out))


def ece(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence, `n_bins` equal-width bins."""
    p, y = _np(probs), _np(labels).astype(int)
    _check(p, y)
    full = _full(p)
    conf, pred = full.max(1), full.argmax(1)
    correct = (pred == y).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total)


def threshold_at_fpr(control_scores: Any, fpr: float = 0.01) -> float:
    """The score threshold that flags at most a fraction `fpr` of held-out control (negative) examples."""
    c = _np(control_scores)
    if len(c) == 0:
        raise ValueError("no control examples to set the threshold on: pass held-out negatives")
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr={fpr}: use a rate in [0, 1)")
    return float(np.quantile(c, 1 - fpr, method="higher"))


def recall_at_fpr(scores: Any, labels: Any, control_scores: Any, fpr: float = 0.01) -> dict[str, float]:
    """Recall of positives (`labels == 1`) when the threshold is set on control scores at the given FPR.

    Returns recall, the threshold, and the FPR reached on the negatives of the evaluated set.
    """
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    thr = threshold_at_fpr(control_scores, fpr)
    pos, neg = s[y == 1], s[y == 0]
    return {
        "recall": float((pos > thr).mean()) if len(pos) else float("nan"),
        "threshold": thr,
        "fpr_eval": float((neg > thr).mean()) if len(neg) else float("nan"),
    }


def positive_score(probs: Any) -> np.ndarray:
    """Score for 'class 1 vs rest' recall: the binary probability, or 1 - P(class 0) for multi-class."""
    p = _np(probs)
    return p if p.ndim == 1 else 1 - p[:, 0]


def evaluate(probs: Any, labels: Any, control_probs: Any | None = None, fpr: float = 0.01) -> dict[str, float]:
    """All metrics for one evaluation set. `control_probs`: held-out negatives to set the recall threshold."""
    y = _np(labels).astype(int)
    out = {
        "n": int(len(y)),
        "accuracy": accuracy(probs, y),
        "auroc": auroc(probs, y),
        "f1": f1(probs, y),
        "ece": ece(probs, y),
    }
    if control_probs is not None:
        r = recall_at_fpr(positive_score(probs), (y != 0).astype(int), positive_score(control_probs), fpr)
        out[f"recall_at_{fpr:g}_fpr"] = r["recall"]
        out["threshold_at_fpr"] = r["threshold"]
    return out


def _fast_auroc(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary AUROC of each row of `s` `[B, N]` against labels `y` `[B, N]` (rank sums, ties counted half)."""
    from scipy.stats import rankdata

    r = rankdata(s, axis=1)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    return ((r * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _resample(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """`[n_boot, N]` bootstrap indices drawn within each class (every resample keeps both classes' counts)."""
    rng = np.random.default_rng(seed)
    cols = []
    for c in (0, 1):
        idx = np.nonzero(y == c)[0]
        cols.append(idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))])
    return np.concatenate(cols, 1)


def bootstrap_auroc(scores: Any, labels: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the binary AUROC (resampling within each class); NaNs with one class."""
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        return float("nan"), float("nan")
    idx = _resample(y, n_boot, seed)
    a = _fast_auroc(s[idx], y[idx])
    q = (1 - level) / 2
    return float(np.quantile(a, q)), float(np.quantile(a, 1 - q))


def bootstrap_auroc_diff(scores_a: Any, scores_b: Any, labels: Any, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the same examples, with a paired percentile bootstrap interval."""
    a, b, y = _np(scores_a), _np(scores_b), _np(labels).astype(int)
    _check(a, y)
    _check(b, y)
    idx = _resample(y, n_boot, seed)
    d = _fast_auroc(a[idx], y[idx]) - _fast_auroc(b[idx], y[idx])
    q = (1 - level) / 2
    return {"diff": binary_auroc(a, y) - binary_auroc(b, y), "lo": float(np.quantile(d, q)),
            "hi": float(np.quantile(d, 1 - q))}


# ------------------------------------------------------------------------------------------- g-mean² (monitors)


def gmean2(scores: Any, labels: Any, threshold: float) -> float:
    """g-mean² = TPR × TNR of the rule `score >= threshold` (Guan et al. 2025, monitorability): 0 when the rule misses
    every positive or flags every negative, 1 when it is right on all."""
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        raise ValueError("g-mean² needs both classes: TPR and TNR are each a share of one class")
    flag = s >= threshold
    return float(flag[pos].mean() * (~flag[neg]).mean())


def gmean2_threshold(scores: Any, labels: Any) -> float:
    """The threshold that maximises g-mean² on these (validation) scores: every distinct score is tried (the
    lowest of ties kept); use it unchanged on the test split."""
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    cands = np.unique(s)
    best, arg = -1.0, float(cands[0])
    for t in cands:
        g = gmean2(s, y, float(t))
        if g > best + 1e-12:
            best, arg = g, float(t)
    return arg


def bootstrap_gmean2(scores: Any, labels: Any, threshold: float, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of g-mean² at a fixed threshold (resampling within each class)."""
    s, y = _np(scores), _np(labels).astype(int)
    _check(s, y)
    idx = _resample(y, n_boot, seed)
    flag, yy = s[idx] >= threshold, y[idx]
    g = (flag & (yy == 1)).sum(1) / (yy == 1).sum(1) * ((~flag) & (yy == 0)).sum(1) / (yy == 0).sum(1)
    q = (1 - level) / 2
    return float(np.quantile(g, q)), float(np.quantile(g, 1 - q))
