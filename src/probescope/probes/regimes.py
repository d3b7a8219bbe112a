"""Probes under hard regimes (Kantamneni et al. 2025): raw-activation probes vs SAE-feature probes when data are
scarce, imbalanced, noisily labelled or shifted, with "pick by validation" as a row.

A regime draws the training set from the task's training split (in-domain), and a validation set of the same kind
from the validation split (the same n, class ratio or noise rate: a user's validation data share the deficiency):

  scarcity   n training examples (levels 4 .. 1,024, up to what the split holds), classes balanced
  imbalance  a fixed n, positives a fraction p of it (levels 0.5 .. 0.05)
  noise      a fixed n, balanced, a fraction r of the labels flipped (exactly round(r n), chosen at random)
  shift      every training example of domain A; scored on domain B (validation: domain A)

Every method is scored on the clean, balanced test split (for shift: domain B's). Binary tasks only: a multi-class
task is read as its first class against the rest. Methods: the raw kinds (`linear-last`, `linear-mean`,
`attention`) and `sae-k` (the sparse probe on k latents of an SAE of the same layer, chosen by class-mean
difference); `pick-by-val` takes, per cell, the method with the best validation AUROC.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from . import metrics as M
from .config import MIN_PER_CLASS, REGIMES  # noqa: F401  (the job's config lives with the others)
LEVELS: dict[str, tuple] = {
    "scarcity": (4, 8, 16, 32, 64, 128, 256, 512, 1024),
    "imbalance": (0.5, 0.2, 0.1, 0.05),
    "noise": (0.0, 0.1, 0.2, 0.3),
    "shift": ("A->B",),
}


@dataclass
class Draw:
    """A regime's sample: indices into the pool, and the labels the probe sees (noisy under `noise`)."""

    idx: list[int]
    labels: list[int]
    flipped: int = 0


def _by_class(y: Sequence[int], pool: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {0: [], 1: []}
    for i in pool:
        out[int(y[i])].append(i)
    return out


def available(y: Sequence[int], pool: Sequence[int]) -> int:
    """The largest balanced n the pool holds (twice its rarer class)."""
    c = _by_class(y, pool)
    return 2 * min(len(c[0]), len(c[1]))


def max_n(regime: str, level: Any, y: Sequence[int], pool: Sequence[int]) -> int:
    """The largest set the pool yields for `regime` at `level` (imbalance: both classes at the level's ratio)."""
    c = _by_class(y, pool)
    if regime == "imbalance":
        p = float(level)
        return int(min(len(c[1]) / p, len(c[0]) / (1 - p)))
    return available(y, pool)


def draw(regime: str, level: Any, y: Sequence[int], pool: Sequence[int], n: int, rng: random.Random) -> Draw:
    """Sample `regime` at `level` from `pool` (indices into binary labels `y`). `n`: the set size for imbalance and
    noise (scarcity's n is its level). Refuses a level that leaves a class fewer than `MIN_PER_CLASS` examples or
    asks for more than the pool holds, naming the minimum or the maximum."""
    by = _by_class(y, pool)
    if regime == "shift":
        idx = sorted(pool)
        return Draw(idx, [int(y[i]) for i in idx])
    if regime == "scarcity":
        n = int(level)
        counts = {1: n // 2, 0: n - n // 2}
    elif regime == "imbalance":
        p = float(level)
        if not 0 < p <= 0.5:
            raise ValueError(f"imbalance level {p}: give the positive fraction in (0, 0.5]")
        counts = {1: int(round(p * n)), 0: n - int(round(p * n))}
    elif regime == "noise":
        counts = {1: n // 2, 0: n - n // 2}
    else:
        raise ValueError(f"unknown regime {regime!r}: use one of {', '.join(REGIMES)}")
    for c, k in counts.items():
        if k < MIN_PER_CLASS:
            need = (MIN_PER_CLASS * 2 if regime != "imbalance" else math.ceil(MIN_PER_CLASS / float(level)))
            raise ValueError(f"{regime} at {level} with n={n} leaves class {c} {k} example(s): a regime needs at least "
                             f"{MIN_PER_CLASS} per class (n >= {need})")
        if k > len(by[c]):
            raise ValueError(f"{regime} at {level} asks for {k} examples of class {c} but the split holds {len(by[c])}: "
                             f"use n <= {available(y, pool)} (or more data: --n)")
    idx = sorted(rng.sample(by[1], counts[1]) + rng.sample(by[0], counts[0]))
    labels = [int(y[i]) for i in idx]
    flipped = 0
    if regime == "noise":
        r = float(level)
        if not 0 <= r < 0.5:
            raise ValueError(f"noise level {r}: give a flip rate in [0, 0.5)")
        flipped = int(round(r * len(idx)))
        for j in rng.sample(range(len(idx)), flipped):
            labels[j] = 1 - labels[j]
        if len(set(labels)) < 2:
            raise ValueError(f"noise at {r} left one class: use a lower rate or a larger n")
    return Draw(idx, labels, flipped)


# ------------------------------------------------------------------------------------------------- features


class _Identity:
    """An 'encoder' that returns its input: the sparse probe on precomputed (pooled) SAE latents."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


def pooled_latents(sae: Any, x: torch.Tensor, mask: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Mean over each example's real tokens of the SAE's dense latents: `[N, n_latents]` (the sparse probe's
    mean-pooled features, computed once)."""
    N, T, D = x.shape
    flat, fm = x.reshape(-1, D), mask.reshape(-1)
    sel = fm.nonzero().flatten()
    row = sel // T
    out = None
    with torch.no_grad():
        for s in range(0, len(sel), chunk):
            z = sae.encode(flat[sel[s:s + chunk]].float())
            z = (z.dense() if hasattr(z, "dense") else z).float()
            if out is None:
                out = torch.zeros(N, z.shape[-1])
            out.index_add_(0, row[s:s + chunk], z)
    return out / mask.sum(1, keepdim=True).clamp_min(1).float()


@dataclass
class TaskFeatures:
    """One task's features at one layer: sequences (for attention), pooled vectors, SAE latents; binary labels,
    splits and domains."""

    name: str
    seq: Any  # Acts [N, T, D]
    pooled: dict[str, torch.Tensor]  # "last" / "mean" -> [N, D]
    latents: torch.Tensor | None  # [N, n_latents]
    y: list[int]
    splits: list[str]
    domains: list[str]
    shift: tuple[str, str]
    positive: Any


def task_features(model: Any, tok: Any, name: str, n_per_domain: int, layer: int, sae: Any = None, seed: int = 0,
                  max_length: int = 48, batch_size: int = 32, shift: tuple[str, str] | None = None,
                  threads: int = 0) -> TaskFeatures:
    from .data import featurize
    from .pooling import pool_tokens
    from .tasks import TASKS, make_task

    ds = make_task(name, n_per_domain, seed)
    classes = ds.classes
    positive = classes[1] if len(classes) == 2 else classes[0]
    y = [int(lab == positive) for lab in ds.labels]
    acts = featurize(model, tok, ds.texts, [layer], max_length=max_length, batch_size=batch_size,
                     threads=threads or 1)[layer]
    pooled = {p: pool_tokens(acts.x, acts.mask, p) for p in ("last", "mean")}
    lat = pooled_latents(sae, acts.x, acts.mask) if sae is not None else None
    return TaskFeatures(name, acts, pooled, lat, y, list(ds.splits), list(ds.domains),
                        shift or TASKS[name].shift, positive)


# ------------------------------------------------------------------------------------------------- methods


def method_names(raw: Sequence[str], ks: Sequence[int], with_sae: bool) -> list[str]:
    return list(raw) + ([f"sae-{k}" for k in ks] if with_sae else [])


def fit_score(method: str, tf: TaskFeatures, tr: Draw, sets: dict[str, tuple[list[int], list[int]]],
              fit_cfg: Any, val: Draw | None = None) -> dict[str, np.ndarray]:
    """Train `method` on the draw (early stopping of the AdamW kinds on `val`); its positive-class scores on each
    named (indices, labels) set."""
    from .base import make_probe
    from .sparse import SparseProbe

    def feats(idx: list[int]):
        ix = torch.as_tensor(idx)
        if method.startswith("sae-"):
            return tf.latents[ix]
        if method == "attention":
            return tf.seq[ix]
        return tf.pooled[method.split("-", 1)[1]][ix]

    if method.startswith("sae-"):
        if tf.latents is None:
            raise ValueError(f"{method}: no SAE latents; pass --sae PATH (an SAE of this layer)")
        probe = SparseProbe(encoder=_Identity(), k=int(method[4:]))
    elif method == "attention":
        probe = make_probe("attention")
    elif method in ("linear-last", "linear-mean"):
        probe = make_probe("linear", pool=method.split("-", 1)[1])
    else:
        raise ValueError(f"unknown method {method!r}: use linear-last, linear-mean, attention or sae-K")
    v = None if val is None else (feats(val.idx), val.labels)
    probe.fit(feats(tr.idx), tr.labels, config=fit_cfg, classes=[0, 1], val=v)
    return {k: probe.predict_proba(feats(idx)).numpy() for k, (idx, _) in sets.items()}


def run_cell(tf: TaskFeatures, regime: str, level: Any, methods: Sequence[str], n_fixed: int, seed: int,
             fit_cfg: Any, n_boot: int = 500) -> dict[str, Any]:
    """One (task, regime, level): draw train and validation sets, fit every method, score on the clean test set.
    The training set has `n_fixed` examples (imbalance, noise; at most what the pool yields at that level) or the
    level's n (scarcity); the validation set as many (at most what the validation split yields), same regime."""
    rng = random.Random(f"{seed}-{tf.name}-{regime}-{level}")
    a, b = tf.shift
    tr_pool = [i for i in range(len(tf.y)) if tf.splits[i] == "train" and tf.domains[i] == a]
    va_pool = [i for i in range(len(tf.y)) if tf.splits[i] == "val" and tf.domains[i] == a]
    te_dom = b if regime == "shift" else a
    te = [i for i in range(len(tf.y)) if tf.splits[i] == "test" and tf.domains[i] == te_dom]
    n = min(n_fixed, max_n(regime, level, tf.y, tr_pool))
    tr = draw(regime, level, tf.y, tr_pool, n, rng)
    n_val = min(len(tr.idx), max_n(regime, level, tf.y, va_pool))
    try:
        va = draw(regime, n_val if regime == "scarcity" else level, tf.y, va_pool, n_val, rng)
    except ValueError as e:
        raise ValueError(f"{tf.name}, validation split: {e}") from None
    y_te = [tf.y[i] for i in te]
    out: dict[str, Any] = {"task": tf.name, "regime": regime, "level": level, "n_train": len(tr.idx),
                           "n_pos_train": int(sum(tr.labels)), "flipped": tr.flipped, "n_val": len(va.idx),
                           "n_test": len(te), "methods": {}}
    scores = {}
    for m in methods:
        t0 = time.perf_counter()
        s = fit_score(m, tf, tr, {"val": (va.idx, va.labels), "test": (te, y_te)}, fit_cfg, va)
        scores[m] = s["test"]
        lo, hi = M.bootstrap_auroc(s["test"], y_te, n_boot, seed)
        out["methods"][m] = {"val_auroc": M.binary_auroc(s["val"], va.labels), "auroc": M.binary_auroc(s["test"], y_te),
                             "lo": lo, "hi": hi, "fit_seconds": round(time.perf_counter() - t0, 3)}
    pick = max(methods, key=lambda m: (np.nan_to_num(out["methods"][m]["val_auroc"], nan=-1.0), -methods.index(m)))
    lo, hi = M.bootstrap_auroc(scores[pick], y_te, n_boot, seed)
    out["methods"]["pick-by-val"] = {"picked": pick, "auroc": out["methods"][pick]["auroc"], "lo": lo, "hi": hi}
    return out


def summarize(cells: list[dict], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per regime: each method's mean test AUROC over its (task, level) cells; the winner; a 95% bootstrap interval
    (over cells) of the winner's mean and of (best raw - best SAE) where both exist."""
    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for regime in REGIMES:
        cs = [c for c in cells if c["regime"] == regime]
        if not cs:
            continue
        methods = list(cs[0]["methods"])
        A = np.array([[c["methods"][m]["auroc"] for m in methods] for c in cs])  # [cells, methods]
        mean = A.mean(0)
        boot = rng.integers(0, len(cs), size=(n_boot, len(cs)))
        Bm = A[boot].mean(1)  # [n_boot, methods]
        w = int(np.argmax(mean))
        r: dict[str, Any] = {"cells": len(cs), "mean_auroc": dict(zip(methods, mean.round(4).tolist())),
                             "winner": methods[w], "winner_auroc": float(mean[w]),
                             "winner_ci": [float(np.quantile(Bm[:, w], 0.025)), float(np.quantile(Bm[:, w], 0.975))]}
        second = int(np.argsort(-mean)[1]) if len(methods) > 1 else w
        d = Bm[:, w] - Bm[:, second]
        r["runner_up"] = methods[second]
        r["winner_minus_runner_up_ci"] = [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]
        raw = [i for i, m in enumerate(methods) if not m.startswith("sae-") and m != "pick-by-val"]
        sae = [i for i, m in enumerate(methods) if m.startswith("sae-")]
        if raw and sae:
            br, bs = max(raw, key=lambda i: mean[i]), max(sae, key=lambda i: mean[i])
            d = Bm[:, br] - Bm[:, bs]
            r["best_raw"], r["best_sae"] = methods[br], methods[bs]
            r["raw_minus_sae"] = float(mean[br] - mean[bs])
            r["raw_minus_sae_ci"] = [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]
        out[regime] = r
    return out


# ------------------------------------------------------------------------------------------------- the job


def run_regimes(cfg: Any, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """The job behind `probescope probe regimes`."""
    from ..core.progress import progress
    from .config import FitOptions
    from .runner import _rundir, fit_config, layer_job, load_encoder

    with layer_job(cfg, "regimes", model, tokenizer) as (job, cfg):
        model, tok, layer = job.model, job.tokenizer, cfg.layer
        sae = load_encoder(cfg.sae)
        fit_cfg = fit_config(FitOptions(weight_decay=cfg.weight_decay, max_epochs=cfg.max_epochs), cfg.seed,
                             cfg.threads)
        methods = method_names(cfg.kinds, cfg.ks, sae is not None)
        levels = {"scarcity": list(cfg.sizes), "imbalance": list(cfg.positive_fractions), "noise": list(cfg.flip_rates),
                  "shift": ["A->B"]}
        feats = []
        for name in cfg.tasks:
            feats.append(task_features(model, tok, name, cfg.n_per_domain, layer, sae, cfg.seed, threads=cfg.threads))
        plan, skipped = [], []
        n_fixed = {}
        for tf in feats:
            pool = [i for i in range(len(tf.y)) if tf.splits[i] == "train" and tf.domains[i] == tf.shift[0]]
            # one n for every imbalance level of a task: what its most extreme level allows
            n_fixed[tf.name] = min([cfg.n_fixed, available(tf.y, pool)]
                                   + [max_n("imbalance", p, tf.y, pool) for p in cfg.positive_fractions
                                      if "imbalance" in cfg.regimes])
            for regime in cfg.regimes:
                for lv in levels[regime]:
                    if regime == "scarcity" and lv > available(tf.y, pool):
                        skipped.append(f"{tf.name} scarcity n={lv} (the pool holds {available(tf.y, pool)} balanced)")
                        continue
                    plan.append((tf, regime, lv))
        t0 = time.perf_counter()
        cells = []
        with progress(len(plan), "regimes", unit="cell") as bar:
            for tf, regime, lv in plan:
                cells.append(run_cell(tf, regime, lv, methods, n_fixed[tf.name], cfg.seed, fit_cfg, cfg.bootstrap))
                bar.advance()
        summary = summarize(cells, seed=cfg.seed)
        res = {"model": cfg.model, "layer": layer, "tasks": {tf.name: {"positive": tf.positive, "shift": list(tf.shift)}
                                                             for tf in feats},
               "methods": methods + ["pick-by-val"], "cells": cells, "summary": summary, "skipped": skipped,
               "seconds": round(time.perf_counter() - t0, 1)}
        res["plots"] = [{
            "type": "heatmap", "title": f"mean test AUROC per regime (layer {layer}; {len(cfg.tasks)} tasks)",
            "rows": res["methods"], "cols": list(summary),
            "values": [[summary[r]["mean_auroc"][m] for r in summary] for m in res["methods"]],
            "fmt": ".3f", "signed": False, "x_label": "regime", "y_label": "method", "value_label": "AUROC"}]
        run = _rundir(cfg.out, "regimes")
        run.write_config(cfg)
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res
