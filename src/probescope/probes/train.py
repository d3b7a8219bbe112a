"""The one trainer every probe kind shares: class weights, AdamW with early stopping, L-BFGS, and the
stratified k-fold choice of weight decay."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from ..core.threads import torch_threads

if TYPE_CHECKING:
    from .base import Probe


@dataclass
class FitConfig:
    """How a probe is trained. `weight_decay=None` picks it from `wd_grid` by stratified k-fold CV."""

    optimizer: str = "auto"  # "auto" (the kind's default) | "adamw" | "lbfgs"
    weight_decay: float | None = None
    wd_grid: Sequence[float] = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
    cv_folds: int = 3
    class_weight: str | None = "sqrt"  # "sqrt" (of inverse frequency) | "balanced" | None
    lr: float | None = None  # None: the kind's default_lr
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 5
    val_fraction: float = 0.2
    max_iter: int = 200  # L-BFGS iterations
    seed: int = 0
    threads: int | None = 1  # torch threads while fitting (None: leave as is)
    extra: dict = field(default_factory=dict)


def class_weights(y: torch.Tensor, n_classes: int, mode: str | None) -> torch.Tensor:
    """Per-class loss weights: (inverse frequency)^(1/2) for "sqrt", ^1 for "balanced", ones for None;
    scaled so the weighted mean over the training examples is 1."""
    counts = torch.bincount(y, minlength=n_classes).double()
    if mode is None:
        w = torch.ones(n_classes, dtype=torch.double)
    elif mode in ("sqrt", "balanced"):
        freq = counts / counts.sum()
        w = torch.where(counts > 0, freq.clamp_min(1e-12) ** (-0.5 if mode == "sqrt" else -1.0), torch.zeros_like(freq))
    else:
        raise ValueError(f"class_weight={mode!r}: use 'sqrt', 'balanced' or None")
    w = w * counts.sum() / (w * counts).sum()
    return w.float()


def domain_weights(domains: Sequence[str]) -> torch.Tensor:
    """Per-example weights that give every domain the same total weight: `N / (D * n_d)` for an example of domain
    `d` (D domains, n_d examples in d); their mean is 1. One domain gives ones."""
    names = sorted(set(domains))
    if not names:
        raise ValueError("no domains: pass one domain name per training example")
    counts = {d: 0 for d in names}
    for d in domains:
        counts[d] += 1
    n, k = len(domains), len(names)
    return torch.tensor([n / (k * counts[d]) for d in domains], dtype=torch.float32)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, cw: torch.Tensor, sw: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted mean loss: BCE on one logit (binary) or softmax cross-entropy; `sw` multiplies each
    example's weight (e.g. `domain_weights`)."""
    w = cw[y] if sw is None else cw[y] * sw
    if logits.shape[-1] == 1:
        per = F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
    else:
        per = F.cross_entropy(logits, y, reduction="none")
    return (w * per).sum() / w.sum()


def _stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        va.append(idx[:k])
        tr.append(idx[k:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def _take(prep: tuple[torch.Tensor, ...], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t[idx] for t in prep)


def _fresh(probe: "Probe", seed: int) -> None:
    torch.default_generator.manual_seed(seed)  # the CPU generator builds the weights (torch.manual_seed also
    # seeds every accelerator backend, a millisecond per call even without one: too slow for small probes)
    probe.build(probe.n_out)


@torch.no_grad()
def _eval_loss(probe: "Probe", prep: tuple[torch.Tensor, ...], y: torch.Tensor, cw: torch.Tensor, bs: int = 512,
               sw: torch.Tensor | None = None) -> float:
    probe.eval()
    logits = torch.cat([probe.logits(*_take(prep, torch.arange(s, min(s + bs, len(y))))) for s in range(0, len(y), bs)])
    return float(loss_fn(logits, y, cw, sw))


def _linear_lbfgs_scipy(head: torch.nn.Linear, f: torch.Tensor, y: torch.Tensor, cw: torch.Tensor, wd: float,
                        cfg: FitConfig, sw: torch.Tensor | None = None) -> dict:
    """The same objective as `train_lbfgs` for a plain linear head, with SciPy's L-BFGS-B in float64 and the
    gradient written out: no autograd or Python line search per evaluation (several times faster on small fits)."""
    import numpy as np
    from scipy.optimize import fmin_l_bfgs_b
    from scipy.special import expit
    from threadpoolctl import threadpool_limits

    X = f.detach().float().numpy()  # float32 products (the loss and the L-BFGS state stay float64)
    yy = y.numpy()
    w = cw.double().numpy()[yy]
    if sw is not None:
        w = w * sw.double().numpy()
    w = w / w.sum()
    K, D = head.out_features, head.in_features
    rows = np.arange(len(yy))

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        Wt, b = theta[: K * D].reshape(K, D), theta[K * D:]
        Z = (X @ Wt.T.astype(np.float32)).astype(np.float64) + b
        if K == 1:
            z, t = Z[:, 0], yy.astype(np.float64)
            loss = float(w @ (np.logaddexp(0.0, z) - t * z))
            G = ((expit(z) - t) * w)[:, None]
        else:
            Zm = Z - Z.max(1, keepdims=True)
            logp = Zm - np.log(np.exp(Zm).sum(1, keepdims=True))
            loss = float(-(w * logp[rows, yy]).sum())
            G = np.exp(logp)
            G[rows, yy] -= 1.0
            G *= w[:, None]
        gW = (G.T.astype(np.float32) @ X).astype(np.float64) + wd * Wt
        loss += 0.5 * wd * float((Wt * Wt).sum())
        return loss, np.concatenate([gW.ravel(), G.sum(0)])

    theta0 = np.concatenate([head.weight.detach().double().numpy().ravel(), head.bias.detach().double().numpy()])
    # numpy's BLAS gets torch's thread count: left alone it starts one thread per core, which on a busy machine
    # (or next to torch's own threads) oversubscribes the cores and runs many times slower
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        theta, fval, info = fmin_l_bfgs_b(fg, theta0, m=20, maxiter=cfg.max_iter, pgtol=1e-5, factr=1e7)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(theta[: K * D].reshape(K, D)))
        head.bias.copy_(torch.from_numpy(theta[K * D:]))
    return {"optimizer": "lbfgs", "solver": "scipy", "iterations": int(info["nit"]), "train_loss": float(fval)}


def train_lbfgs(probe: "Probe", prep: tuple[torch.Tensor, ...], y: torch.Tensor, cw: torch.Tensor, wd: float, cfg: FitConfig,
                sw: torch.Tensor | None = None) -> dict:
    """Full-batch L-BFGS (strong Wolfe line search) on loss + wd/2 * ||W||^2; convex for a linear head.

    A probe whose logits are one `nn.Linear` of its prepared features (`probe.linear_head()`), on CPU, goes through
    SciPy's L-BFGS-B with the same objective and tolerances; anything else through `torch.optim.LBFGS`."""
    head = probe.linear_head() if hasattr(probe, "linear_head") else None
    if head is not None and len(prep) == 1 and prep[0].dim() == 2 and prep[0].device.type == "cpu":
        probe.eval()
        return _linear_lbfgs_scipy(head, prep[0], y, cw, wd, cfg, sw)
    probe.train()
    params = [p for p in probe.parameters() if p.requires_grad]
    pen = probe.penalized()
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=cfg.max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(probe.logits(*prep), y, cw, sw)
        if wd > 0:
            loss = loss + 0.5 * wd * sum((p**2).sum() for p in pen)
        loss.backward()
        return loss

    loss = opt.step(closure)
    n_iter = opt.state[opt._params[0]].get("n_iter", 0)
    probe.eval()
    return {"optimizer": "lbfgs", "iterations": int(n_iter), "train_loss": float(loss.detach())}


def train_adamw(
    probe: "Probe",
    prep: tuple[torch.Tensor, ...],
    y: torch.Tensor,
    cw: torch.Tensor,
    wd: float,
    cfg: FitConfig,
    val: tuple[tuple[torch.Tensor, ...], torch.Tensor],
    sw: torch.Tensor | None = None,
) -> dict:
    """Minibatch AdamW (decoupled weight decay on weights only), early stopping on validation loss;
    the parameters of the best epoch are kept."""
    pen_ids = {id(p) for p in probe.penalized()}
    params = [p for p in probe.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) in pen_ids], "weight_decay": wd},
        {"params": [p for p in params if id(p) not in pen_ids], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr or probe.default_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    best, best_state, bad, epoch = float("inf"), None, 0, 0
    n = len(y)
    for epoch in range(1, cfg.max_epochs + 1):
        probe.train()
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            opt.zero_grad()
            loss_fn(probe.logits(*_take(prep, idx)), y[idx], cw, None if sw is None else sw[idx]).backward()
            opt.step()
        vl = _eval_loss(probe, val[0], val[1], cw)
        if vl < best - 1e-5:
            best, best_state, bad = vl, copy.deepcopy(probe.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        probe.load_state_dict(best_state)
    probe.eval()
    return {"optimizer": "adamw", "epochs": epoch, "val_loss": best}


def _train_once(probe, prep, y, cw, wd, cfg, opt_name, val=None, sw=None) -> dict:
    _fresh(probe, cfg.seed)
    if opt_name == "lbfgs":
        return train_lbfgs(probe, prep, y, cw, wd, cfg, sw)
    if val is None:
        tr, va = _stratified_holdout(y, cfg.val_fraction, cfg.seed)
        if len(va) == 0:
            raise ValueError("too few examples for a validation slice: pass val=... or more training data")
        val = (_take(prep, va), y[va])
        prep, y = _take(prep, tr), y[tr]
        sw = None if sw is None else sw[tr]
    return train_adamw(probe, prep, y, cw, wd, cfg, val, sw)


def choose_weight_decay(probe, prep, y, cw, cfg: FitConfig, opt_name: str, sw=None) -> tuple[float, dict[str, float]]:
    """Stratified k-fold CV: the weight decay in `cfg.wd_grid` with the lowest mean held-out loss.
    (For AdamW kinds, the held-out fold also serves for early stopping.)"""
    from sklearn.model_selection import StratifiedKFold

    min_count = int(torch.bincount(y).min())
    folds = min(cfg.cv_folds, min_count)
    if folds < 2:
        raise ValueError(
            f"the rarest class has {min_count} training example(s): weight-decay CV needs at least 2 per class; "
            "add examples or set weight_decay explicitly"
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    splits = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in skf.split(torch.zeros(len(y)), y.numpy())]
    scores: dict[str, float] = {}
    for wd in cfg.wd_grid:
        losses = []
        for tr, va in splits:
            p_tr, p_va = _take(prep, tr), _take(prep, va)
            _train_once(probe, p_tr, y[tr], cw, wd, cfg, opt_name, val=(p_va, y[va]), sw=None if sw is None else sw[tr])
            losses.append(_eval_loss(probe, p_va, y[va], cw, sw=None if sw is None else sw[va]))
        scores[f"{wd:g}"] = sum(losses) / len(losses)
    best = min(cfg.wd_grid, key=lambda w: scores[f"{w:g}"])
    return float(best), scores


def fit_probe(
    probe: "Probe",
    x: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    cfg: FitConfig,
    sample_weight: torch.Tensor | None = None,
) -> None:
    """Train `probe` in place (its `setup` has run); records what was done in `probe.fit_info`.
    `sample_weight` (`[N]`, positive) multiplies each training example's class weight in the loss."""
    # One thread by default: with more, each small elementwise op pays an OpenMP barrier, which costs
    # milliseconds on a busy machine (measured: gelu on 48x64, 12 ms with 2 threads vs 0.01 ms with 1).
    # Measured on a shared 2-core machine: an 8-head attention probe epoch on 1,280 x 128 x 576 took 0.6 s
    # with one thread and 3.9 s with two. `threads=None` keeps torch's setting.
    with torch_threads(cfg.threads):
        _fit(probe, x, mask, y, val, cfg, sample_weight)


def _fit(probe, x, mask, y, val, cfg, sw=None) -> None:
    t0 = time.perf_counter()
    opt_name = probe.default_optimizer if cfg.optimizer == "auto" else cfg.optimizer
    if opt_name not in ("adamw", "lbfgs"):
        raise ValueError(f"optimizer={cfg.optimizer!r}: use 'auto', 'adamw' or 'lbfgs'")
    cw = class_weights(y, max(probe.n_out, 2), cfg.class_weight)
    _fresh(probe, cfg.seed)
    with torch.no_grad():
        prep = probe.prepare(x, mask)
        val_prep = None if val is None else (probe.prepare(val[0], val[1]), val[2])
    info: dict = {"n_train": int(len(y)), "class_weights": cw.tolist(), "seed": cfg.seed}
    if sw is not None:
        sw = torch.as_tensor(sw, dtype=torch.float32).flatten()
        if len(sw) != len(y) or not bool(torch.isfinite(sw).all()) or bool((sw <= 0).any()):
            raise ValueError(f"sample_weight: give {len(y)} finite positive weights (one per training example), "
                             f"got {len(sw)} with min {float(sw.min()) if len(sw) else 'n/a'}")
        info["sample_weights"] = "given"
    wd = cfg.weight_decay
    if wd is None:
        wd, info["cv_loss_by_weight_decay"] = choose_weight_decay(probe, prep, y, cw, cfg, opt_name, sw)
    info["weight_decay"] = wd
    info.update(_train_once(probe, prep, y, cw, wd, cfg, opt_name, val=val_prep, sw=sw))
    info["fit_seconds"] = round(time.perf_counter() - t0, 4)
    probe.fit_info = info
