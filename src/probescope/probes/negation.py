"""Truth under negation: training rules for a truth probe, scored on topics training never sees and on their negations.

A probe trained on affirmative statements can read "a familiar pairing" (Paris–France) instead of truth: the pairing
is the same in "Paris is in France." and "Paris is not in France.", so on negations such a probe inverts. The rules:

  affirmative  logistic on the affirmative statements only (the usual recipe; the baseline)
  mixed        logistic on statements and negations (label flipped), topic x polarity domains, domain-balanced loss
  lodo         leave-one-domain-out selection: pooling x weight decay chosen by the mean AUROC on each held-out
               (topic x polarity) domain when trained on the others (balanced), then refit on all
  ccs          contrast-consistent search (Burns et al. 2022), unsupervised on (statement, negation) pairs:
               p = sigmoid(w.x + b), loss (p+ - (1 - p-))^2 + min(p+, p-)^2, each set centred on its own mean; the
               sign is set on the training labels (the one supervised bit)
  paired       negation-paired: logistic on pair differences x+ - x- (and the mirror pair), which cancels whatever
               the statement and its negation share; scored on single statements by the learned direction

Every rule yields one direction `w` (with the standardisation it was fitted in) that scores a single statement;
AUROC is computed within a set (held-out affirmative, held-out negated), so a constant offset per polarity does not
change it. Data: `tasks.probing.truth_pairs` (training topics cities, numbers; held-out animals, elements, colours).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from . import metrics as M
from .config import NEGATION_RULES as RULES, NegationConfig  # noqa: F401  (the job's config lives with the others)
WD_GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0)


@dataclass
class PairFeatures:
    """Pooled features of statement / negation pairs: `pos` and `neg` `[N, D]` per pool, `label` (1 when the
    statement is true; its negation's label is 1 - label), `topic` per pair."""

    pos: dict[str, torch.Tensor]
    neg: dict[str, torch.Tensor]
    label: torch.Tensor
    topic: list[str]

    def __post_init__(self) -> None:
        n = len(self.label)
        if n == 0:
            raise ValueError("no pairs: give at least two statement/negation pairs of each class")
        for pool in self.pos:
            if pool not in self.neg or self.pos[pool].shape != self.neg[pool].shape or self.pos[pool].shape[0] != n:
                raise ValueError(f"pool {pool!r}: statements and negations must both be [{n}, D]")
        if len(self.topic) != n:
            raise ValueError(f"{n} pairs but {len(self.topic)} topics: give one topic per pair")
        if set(self.label.tolist()) != {0, 1}:
            raise ValueError(f"labels {sorted(set(self.label.tolist()))}: the pairs need both classes (0 and 1)")

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: Sequence[int]) -> "PairFeatures":
        ix = torch.as_tensor(list(idx), dtype=torch.long)
        return PairFeatures({k: v[ix] for k, v in self.pos.items()}, {k: v[ix] for k, v in self.neg.items()},
                            self.label[ix], [self.topic[i] for i in ix.tolist()])


@dataclass
class TruthDirection:
    """A fitted rule: `score(x [N, D]) = ((x - mu) / sd) @ w` (higher = more likely true), on `pool`-pooled features."""

    rule: str
    pool: str
    w: torch.Tensor
    mu: torch.Tensor
    sd: torch.Tensor
    info: dict = field(default_factory=dict)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mu) / self.sd) @ self.w


# ------------------------------------------------------------------------------------------------- the rules


def _stats(*xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat(xs).float()
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    return mu, torch.where(sd > 1e-6, sd, torch.ones_like(sd))


def _logistic(X: torch.Tensor, y: torch.Tensor, wd: float | None, seed: int, sw: torch.Tensor | None = None):
    from .linear import LinearProbe
    from .train import FitConfig

    cfg = FitConfig(weight_decay=wd, class_weight=None, seed=seed)
    return LinearProbe().fit(X, y, config=cfg, sample_weight=sw)


def _direction(rule: str, pool: str, probe, info: dict) -> TruthDirection:
    """The probe's logit as `((x - mu) / sd) @ w` (its bias dropped: a constant)."""
    return TruthDirection(rule, pool, probe.head.weight.detach()[0].clone(), probe.mu.clone(), probe.sd.clone(),
                          {**info, "weight_decay": probe.fit_info.get("weight_decay")})


def _mixed_xy(d: PairFeatures, pool: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    X = torch.cat([d.pos[pool], d.neg[pool]])
    y = torch.cat([d.label, 1 - d.label])
    doms = [f"{t}/affirmative" for t in d.topic] + [f"{t}/negated" for t in d.topic]
    return X, y, doms


def fit_affirmative(d: PairFeatures, pool: str = "mean", wd: float | None = None, seed: int = 0) -> TruthDirection:
    """Logistic on the affirmative statements only (weight decay by CV unless given)."""
    return _direction("affirmative", pool, _logistic(d.pos[pool], d.label, wd, seed), {"n_train": len(d)})


def fit_mixed(d: PairFeatures, pool: str = "mean", wd: float | None = None, seed: int = 0) -> TruthDirection:
    """Logistic on statements and negations, each (topic x polarity) domain weighted to the same total."""
    from .train import domain_weights

    X, y, doms = _mixed_xy(d, pool)
    probe = _logistic(X, y, wd, seed, domain_weights(doms))
    return _direction("mixed", pool, probe, {"n_train": len(y), "domains": sorted(set(doms))})


def lodo_scores(d: PairFeatures, pools: Sequence[str], grid: Sequence[float] = WD_GRID,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """Per candidate `pool/wd`: AUROC on each (topic x polarity) domain when trained (balanced) on the others."""
    from .train import domain_weights

    out: dict[str, dict[str, float]] = {}
    for pool in pools:
        X, y, doms = _mixed_xy(d, pool)
        names = sorted(set(doms))
        if len(names) < 2:
            raise ValueError(f"leave-one-domain-out needs at least two domains, got {names}")
        for wd in grid:
            per = {}
            for held in names:
                tr = [i for i, g in enumerate(doms) if g != held]
                te = [i for i, g in enumerate(doms) if g == held]
                probe = _logistic(X[tr], y[tr], wd, seed, domain_weights([doms[i] for i in tr]))
                per[held] = M.binary_auroc(probe.decision(X[te])[:, 0], y[te])
            out[f"{pool}/{wd:g}"] = per
    return out


def fit_lodo(d: PairFeatures, pools: Sequence[str] = ("mean", "last"), grid: Sequence[float] = WD_GRID,
             seed: int = 0) -> TruthDirection:
    """The candidate (pool, weight decay) with the best mean leave-one-domain-out AUROC, refitted on every domain."""
    scores = lodo_scores(d, pools, grid, seed)
    mean = {k: float(np.mean(list(v.values()))) for k, v in scores.items()}
    best = max(mean, key=lambda k: mean[k])
    pool, wd = best.split("/")
    t = fit_mixed(d, pool, float(wd), seed)
    return TruthDirection("lodo", pool, t.w, t.mu, t.sd, {**t.info, "chosen": best, "lodo_mean_auroc": mean,
                                                           "lodo_by_domain": scores[best]})


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """Consistency (p+ = 1 - p-) plus confidence (not both 0.5): Burns et al.'s CCS objective, mean over pairs."""
    return ((p_pos - (1 - p_neg)) ** 2).mean() + (torch.minimum(p_pos, p_neg) ** 2).mean()


def fit_ccs(d: PairFeatures, pool: str = "mean", restarts: int = 10, steps: int = 200, wd: float = 1e-3,
            seed: int = 0) -> TruthDirection:
    """Contrast-consistent search on the pairs (labels unused but for the sign, set so that the training AUROC of
    the statements is >= 0.5). Each set is centred on its own mean and scaled by the pooled std; the best of
    `restarts` L-BFGS runs (lowest loss) is kept."""
    xp, xn = d.pos[pool].float(), d.neg[pool].float()
    _, sd = _stats(xp, xn)
    mu_p, mu_n = xp.mean(0), xn.mean(0)
    a, b = (xp - mu_p) / sd, (xn - mu_n) / sd
    g = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        w = (torch.randn(a.shape[1], generator=g) / math.sqrt(a.shape[1])).requires_grad_(True)
        bias = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = ccs_loss(torch.sigmoid(a @ w + bias), torch.sigmoid(b @ w + bias)) + 0.5 * wd * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss = float(ccs_loss(torch.sigmoid(a @ w + bias), torch.sigmoid(b @ w + bias)))
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, w.detach().clone(), bias.detach().clone())
    if best is None:
        raise ValueError("CCS diverged on every restart: the features hold NaN/inf or are constant")
    loss, w, _ = best
    sign = 1.0 if M.binary_auroc(a @ w, d.label) >= 0.5 else -1.0
    return TruthDirection("ccs", pool, sign * w, (mu_p + mu_n) / 2, sd,
                          {"n_pairs": len(d), "ccs_loss": loss, "restarts": restarts, "sign_from_labels": sign})


def fit_paired(d: PairFeatures, pool: str = "mean", wd: float | None = None, seed: int = 0) -> TruthDirection:
    """Logistic on pair differences: (x+ - x-, label) and (x- - x+, 1 - label), no intercept, in units of the single
    statements' std (not the differences': that would blow up the directions a statement and its negation share,
    which the differences cannot see); scores single statements. Weight decay by 3-fold CV over pairs (stratified by
    label; the score: AUROC of the held-out statements and of their negations) over `WD_GRID` unless given (L2
    strength lambda as in the linear probe: C = 1 / (lambda n))."""
    from sklearn.linear_model import LogisticRegression

    xp, xn = d.pos[pool].float(), d.neg[pool].float()
    mu, sd = _stats(xp, xn)
    diff = ((xp - xn) / sd).double().numpy()
    lab = d.label.numpy()

    def fit(rows: np.ndarray, w: float):
        X = np.concatenate([diff[rows], -diff[rows]])
        y = np.concatenate([lab[rows], 1 - lab[rows]])
        return LogisticRegression(C=1 / (w * len(y)), fit_intercept=False, max_iter=2000).fit(X, y)

    single_p, single_n = ((xp - mu) / sd).double().numpy(), ((xn - mu) / sd).double().numpy()
    cv_auroc = None
    if wd is None:  # CV by pair (a pair and its mirror in the same fold): mean AUROC of the held-out single
        # statements and of their negations
        rng = np.random.default_rng(seed)
        fold = np.empty(len(lab), dtype=int)
        for c in (0, 1):
            idx = rng.permutation(np.nonzero(lab == c)[0])
            fold[idx] = np.arange(len(idx)) % 3
        cv_auroc = {}
        for w in WD_GRID:
            aucs = []
            for k in range(3):
                m = fit(np.nonzero(fold != k)[0], w)
                te = np.nonzero(fold == k)[0]
                aucs.append((M.binary_auroc(single_p[te] @ m.coef_[0], lab[te])
                             + M.binary_auroc(single_n[te] @ m.coef_[0], 1 - lab[te])) / 2)
            cv_auroc[f"{w:g}"] = float(np.mean(aucs))
        wd = max(WD_GRID, key=lambda w: cv_auroc[f"{w:g}"])
    m = fit(np.arange(len(lab)), wd)
    w = torch.from_numpy(m.coef_[0]).float()
    return TruthDirection("paired", pool, w, mu, sd, {"n_pairs": len(d), "weight_decay": wd, "cv_auroc": cv_auroc})


def fit_rule(rule: str, d: PairFeatures, pool: str = "mean", seed: int = 0, wd: float | None = None) -> TruthDirection:
    """One rule of `RULES` on the training pairs."""
    if rule == "affirmative":
        return fit_affirmative(d, pool, wd, seed)
    if rule == "mixed":
        return fit_mixed(d, pool, wd, seed)
    if rule == "lodo":
        return fit_lodo(d, tuple(d.pos), seed=seed)
    if rule == "ccs":
        return fit_ccs(d, pool, seed=seed, **({"wd": wd} if wd is not None else {}))
    if rule == "paired":
        return fit_paired(d, pool, wd, seed)
    raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}")


# ------------------------------------------------------------------------------------------------- scoring


def score_direction(t: TruthDirection, d: PairFeatures, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUROC (with a bootstrap 95% interval) on the statements and, separately, on their negations."""
    out: dict[str, Any] = {}
    for name, x, y in (("affirmative", d.pos[t.pool], d.label), ("negated", d.neg[t.pool], 1 - d.label)):
        s = t.score(x)
        lo, hi = M.bootstrap_auroc(s, y, n_boot, seed)
        out[name] = {"auroc": M.binary_auroc(s, y), "lo": lo, "hi": hi, "n": int(len(y))}
    return out


# ------------------------------------------------------------------------------------------------- the job


def pair_features(model: Any, tok: Any, recs: list[dict], layer: int, max_length: int = 48, batch_size: int = 32,
                  pools: Sequence[str] = ("mean", "last"), threads: int = 0) -> PairFeatures:
    """Pooled layer-`layer` features of each record's `text` and `negation`."""
    from .data import featurize
    from .pooling import pool_tokens

    texts = [r["text"] for r in recs] + [r["negation"] for r in recs]
    acts = featurize(model, tok, texts, [layer], max_length=max_length, batch_size=batch_size,
                     threads=threads or 1)[layer]
    n = len(recs)
    pos, neg = {}, {}
    for p in pools:
        f = pool_tokens(acts.x, acts.mask, p)
        pos[p], neg[p] = f[:n], f[n:]
    return PairFeatures(pos, neg, torch.tensor([r["label"] for r in recs]), [r["topic"] for r in recs])


def split_pairs(d: PairFeatures, seed: int = 0) -> dict[str, PairFeatures]:
    """60/20/20 train/val/test by pair, stratified by (topic, label)."""
    rng = random.Random(seed)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (t, y) in enumerate(zip(d.topic, d.label.tolist())):
        groups.setdefault((t, y), []).append(i)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        a, b = round(0.6 * len(idx)), round(0.8 * len(idx))
        parts["train"] += idx[:a]
        parts["val"] += idx[a:b]
        parts["test"] += idx[b:]
    return {k: d.take(sorted(v)) for k, v in parts.items()}


def check_rules(rules: Sequence[str]) -> list[str]:
    bad = [r for r in rules if r not in RULES]
    if bad or not rules:
        raise ValueError(f"--rules {','.join(rules) or '(none)'}: {', '.join(map(repr, bad)) or 'no rule'} is not a rule; "
                         f"use a comma-separated subset of {', '.join(RULES)}")
    return list(rules)


def negation_table(train: PairFeatures, tests: dict[str, PairFeatures], rules: Sequence[str], pool: str = "mean",
                   wd: float | None = None, n_boot: int = 1000, seed: int = 0, quiet: bool | None = None) -> list[dict]:
    """One row per rule: fitted on `train`, scored on each named test set (affirmative and negated); the row's
    `direction` holds the fitted `TruthDirection`."""
    import time

    from ..core.progress import progress

    rows = []
    with progress(len(rules), "negation rules", unit="rule", quiet=quiet) as bar:
        for rule in check_rules(rules):
            t0 = time.perf_counter()
            t = fit_rule(rule, train, pool, seed, wd)
            row: dict[str, Any] = {"rule": rule, "pool": t.pool, "fit_seconds": round(time.perf_counter() - t0, 2),
                                   "info": t.info, "direction": t}
            for name, d in tests.items():
                row[name] = score_direction(t, d, n_boot, seed)
            rows.append(row)
            bar.advance()
    return rows


def verdict(rows: list[dict], neg_goal: float = 0.8, aff_goal: float = 0.9) -> str:
    """One line: which rules meet the goal on the held-out topics (negated >= 0.8 and affirmative >= 0.9 AUROC), and
    the closest rule (the best lower of the two)."""
    h = {r["rule"]: (r["heldout_topics"]["affirmative"]["auroc"], r["heldout_topics"]["negated"]["auroc"]) for r in rows}
    met = [k for k, (a, n) in h.items() if a >= aff_goal and n >= neg_goal]
    close = max(h, key=lambda k: min(h[k]))
    return (f"held-out topics: goal (affirmative >= {aff_goal}, negated >= {neg_goal}) met by {', '.join(met) or 'no rule'}; "
            f"closest: {close} (affirmative {h[close][0]:.3f}, negated {h[close][1]:.3f})")


def run_negation(cfg: NegationConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """The job behind `probescope probe negation`: features, the rules, the table, a run folder."""
    from ..core.io import save_tensors
    from ..tasks.probing import HELDOUT_TOPICS, TRAIN_TOPICS, truth_pairs
    from .runner import _rundir, layer_job

    with layer_job(cfg, "negation", model, tokenizer, rules=list(cfg.rules)) as (job, cfg):
        model, tok, layer, rules = job.model, job.tokenizer, cfg.layer, cfg.rules
        train_recs = truth_pairs(cfg.n_pairs, cfg.seed, TRAIN_TOPICS)
        held_recs = truth_pairs(cfg.n_heldout, cfg.seed + 1, HELDOUT_TOPICS)
        feats = pair_features(model, tok, train_recs + held_recs, layer, cfg.max_length, cfg.batch_size,
                              threads=cfg.threads)
        n_tr = len(train_recs)
        parts = split_pairs(feats.take(range(n_tr)), cfg.seed)
        held = feats.take(range(n_tr, len(feats)))
        tests = {"test_topics": parts["test"], "heldout_topics": held}
        for topic in HELDOUT_TOPICS:
            tests[f"heldout:{topic}"] = held.take([i for i, t in enumerate(held.topic) if t == topic])
        rows = negation_table(parts["train"], tests, rules, cfg.pool, cfg.weight_decay, cfg.bootstrap, cfg.seed)
        res = {"model": cfg.model, "layer": layer, "train_topics": list(TRAIN_TOPICS), "heldout_topics": list(HELDOUT_TOPICS),
               "n_train_pairs": len(parts["train"]), "n_heldout_pairs": len(held), "rows": rows,
               "examples": {"train": train_recs[:2], "heldout": held_recs[:: max(1, cfg.n_heldout)][:3]}}
        res["summary"] = verdict(rows)
        res["plots"] = [{
            "type": "heatmap", "title": f"truth-probe AUROC by rule (layer {layer}; trained on {', '.join(TRAIN_TOPICS)})",
            "rows": [r["rule"] for r in rows],
            "cols": ["test topics, affirmative", "test topics, negated", "held-out, affirmative", "held-out, negated"],
            "values": [[r["test_topics"]["affirmative"]["auroc"], r["test_topics"]["negated"]["auroc"],
                        r["heldout_topics"]["affirmative"]["auroc"], r["heldout_topics"]["negated"]["auroc"]] for r in rows],
            "fmt": ".3f", "signed": False, "x_label": "test set", "y_label": "rule", "value_label": "AUROC"}]
        run = _rundir(cfg.out, "negation")
        dirs = {r["rule"]: r.pop("direction") for r in rows}
        save_tensors(run.path / "directions.safetensors",
                     {f"{k}.{name}": getattr(t, name) for k, t in dirs.items() for name in ("w", "mu", "sd")},
                     metadata={"model": cfg.model, "layer": str(layer), "pools": ",".join(f"{k}={t.pool}" for k, t in dirs.items())})
        run.write_config(cfg)
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res
