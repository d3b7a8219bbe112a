"""Weight edits in the K-FAC eigenbasis (and the baselines they are compared with), applied atomically, reversibly.

For a weight W [d_out, d_in] with factors A (inputs) and G (output gradients), Wᵉ = U_Gᵀ W U_A; component (i, j) has
curvature λ_G,i · λ_A,j. The curvature edit keeps the largest-curvature components until a share ρ of the total
curvature mass Σ λ_G,i λ_A,j = tr(G) tr(A) is kept (or the top k components), and drops the rest:

    W ← U_G [(U_Gᵀ W U_A) ⊙ mask] U_Aᵀ

Baselines remove the same number of parameters (degrees of freedom) from the same matrix:

* `random`: as many components as the curvature edit keeps, but chosen at random (seeded) in the same eigenbasis;
* `magnitude`: zero the smallest-|w| entries, as many as the curvature edit drops;
* `svd`: keep the top-r singular directions of W with r(d_out + d_in − r) ≈ the number of kept components.

An `Edit` holds the change Δ = W_new − W_old per matrix (computed without touching the model), applies it in place
with the old weights kept for an exact `restore`, saves it (delta.safetensors + edit.json with the sites), and never
leaves a model half-modified: every check runs before the first write, and a failed write restores what was written.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..core.io import atomic_write_json, load_tensors, read_artifact, save_tensors
from .config import METHODS
from .factors import Eigen, KFACFactors, _model_id
from .targets import Target, resolve_targets


def check_keep(keep: float | None, top_k: int | None) -> None:
    if (keep is None) == (top_k is None):
        raise ValueError("pass exactly one of keep (a share of curvature mass in (0, 1]) or top_k (components)")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (0.0 < float(keep) <= 1.0) or math.isnan(keep):
            raise ValueError(f"keep share {keep!r} must lie in (0, 1]: e.g. 0.8 keeps 80% of the curvature mass")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k {top_k!r} must be a positive int (components kept per matrix)")


def curvature_mask(e: Eigen, keep: float | None = None, top_k: int | None = None) -> torch.Tensor:
    """Bool [d_out, d_in]: the highest-curvature components kept (share `keep` of the mass, or `top_k` of them)."""
    check_keep(keep, top_k)
    prod = torch.outer(e.lam_g, e.lam_a)
    flat = prod.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    if top_k is not None:
        k = min(top_k, flat.numel())
    else:
        total = float(flat.sum())
        if total <= 0:
            raise ValueError("the factors hold no curvature (all eigenvalue products are 0): collect them on real data")
        cum = flat[order].cumsum(0)
        k = int(torch.searchsorted(cum, torch.tensor(keep * total, dtype=cum.dtype) * (1 - 1e-12)).item()) + 1
        k = min(k, flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view_as(prod)


def svd_rank_for(n_keep: int, d_out: int, d_in: int) -> int:
    """Rank r whose degrees of freedom r(d_out + d_in − r) are closest to n_keep (at least 1 when n_keep > 0)."""
    best, best_err = 0, float("inf")
    for r in range(0, min(d_out, d_in) + 1):
        err = abs(r * (d_out + d_in - r) - n_keep)
        if err < best_err:
            best, best_err = r, err
    return best


def edit_weight(w: torch.Tensor, method: str, n_keep: int | None = None, eig: Eigen | None = None,
                mask: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The edited weight (float64) and a record of what was kept. `kfac` takes `mask`; the others `n_keep`."""
    W = w.detach().double().cpu()
    d_out, d_in = W.shape
    if method == "kfac":
        assert eig is not None and mask is not None
        C = eig.u_g.T @ W @ eig.u_a
        new = eig.u_g @ (C * mask) @ eig.u_a.T
        return new, {"kept_components": int(mask.sum())}
    assert n_keep is not None
    if method == "random":
        assert eig is not None
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(d_out * d_in, generator=g)[:n_keep]
        m = torch.zeros(d_out * d_in, dtype=torch.bool)
        m[idx] = True
        C = eig.u_g.T @ W @ eig.u_a
        return eig.u_g @ (C * m.view(d_out, d_in)) @ eig.u_a.T, {"kept_components": n_keep}
    if method == "magnitude":
        flat = W.abs().flatten()
        order = torch.argsort(flat, descending=True, stable=True)
        m = torch.zeros_like(flat, dtype=torch.bool)
        m[order[:n_keep]] = True
        return W * m.view_as(W), {"kept_entries": n_keep}
    if method == "svd":
        r = svd_rank_for(n_keep, d_out, d_in)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return (U[:, :r] * S[:r]) @ Vh[:r], {"rank": r}
    raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")


@dataclass
class Edit:
    """Per-matrix weight changes Δ (float32, [d_out, d_in]) with the records of the matrices they apply to."""

    targets: list[dict]
    delta: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    _saved: dict[str, torch.Tensor] | None = None  # the original weights while applied

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.targets]

    @property
    def applied(self) -> bool:
        return self._saved is not None

    def _resolve(self, model: nn.Module) -> list[Target]:
        tid = _model_id(model)
        out = []
        for rec in self.targets:
            t = resolve_targets(model, [rec["name"] if rec["site"] else rec["path"]])[0]
            if list(t.shape) != list(rec["shape"]):
                raise ValueError(f"edit made for {rec['name']} of shape {tuple(rec['shape'])} on model "
                                 f"{self.config.get('model')!r}, but model {tid!r} has {tuple(t.shape)}: another model or width")
            out.append(t)
        return out

    def apply(self, model: nn.Module, scale: float = 1.0) -> "Edit":
        """W ← W + scale·Δ for every matrix, in place; all or nothing. Keeps the old weights for `restore`."""
        if self._saved is not None:
            raise ValueError("this edit is already applied: restore() it first")
        targets = self._resolve(model)
        for t in targets:
            d = self.delta[t.name]
            if not bool(torch.isfinite(d).all()):
                raise FloatingPointError(f"the edit's delta for {t.name} holds non-finite values: refusing to apply it")
        saved: dict[str, torch.Tensor] = {}
        try:
            for t in targets:
                saved[t.name] = t.weight.detach().clone()
                new = saved[t.name].double() + scale * self.delta[t.name].double().to(saved[t.name].device)
                t.set_weight(new)
        except BaseException:
            for t in targets:
                if t.name in saved:
                    t.set_weight(saved[t.name])
            raise
        self._saved = saved
        self._model_ref = model
        return self

    def restore(self, model: nn.Module | None = None) -> None:
        """Put back the exact weights the model had before `apply` (bitwise)."""
        if self._saved is None:
            raise ValueError("this edit is not applied: nothing to restore")
        model = model if model is not None else self._model_ref
        for t in self._resolve(model):
            t.set_weight(self._saved[t.name])
        self._saved = None

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator["Edit"]:
        """`with edit.applied_to(model): ...` — edited inside, restored (bitwise) on every exit."""
        self.apply(model)
        try:
            yield self
        finally:
            self.restore(model)

    def save(self, folder: str | Path) -> Path:
        """`delta.safetensors` (Δ per matrix) + `edit.json` (matrices, sites, method, keep, model), atomically."""
        folder = Path(folder)
        save_tensors(folder / "delta.safetensors", {n: self.delta[n].float() for n in self.names})
        atomic_write_json(folder / "edit.json", {"kind": "kfac-edit", "targets": self.targets,
                                                 "sites": [t["site"] for t in self.targets], **self.config})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Edit":
        folder = Path(folder)
        cfg = read_artifact(folder, "edit.json", "kfac-edit", "an edit", "`probescope curvature edit` (or Edit.save)")
        ts = load_tensors(folder / "delta.safetensors")
        targets = cfg.pop("targets")
        cfg.pop("kind", None)
        cfg.pop("sites", None)
        missing = [t["name"] for t in targets if t["name"] not in ts]
        if missing:
            raise ValueError(f"{folder}/delta.safetensors lacks {missing}: the folder is incomplete")
        return cls(targets, {t["name"]: ts[t["name"]] for t in targets}, cfg)


def make_edit(
    model: nn.Module,
    factors: KFACFactors | None,
    method: str = "kfac",
    keep: float | None = 0.8,
    top_k: int | None = None,
    matrices: Sequence[str] | None = None,
    seed: int = 0,
    strict_model: bool = True,
    eigens: dict[str, Eigen] | None = None,
) -> Edit:
    """Plan an edit of `matrices` (default: all those the factors cover) without touching the model.

    `kfac` keeps share `keep` of the curvature mass (or `top_k` components); each baseline removes, per matrix, as
    many parameters as the curvature edit with the same `keep`/`top_k` would (so factors are needed for all)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    check_keep(keep, top_k)
    if factors is None:
        raise ValueError("an edit needs K-FAC factors (even the baselines: they remove as many parameters as the "
                         "curvature edit): collect them with collect_factors or `probescope curvature fit`")
    targets = factors.check_model(model, strict_model=strict_model)
    if matrices is not None:
        want = [resolve_targets(model, [m])[0].name for m in matrices]
        missing = [w for w in want if w not in factors.names]
        if missing:
            raise ValueError(f"no factors for {missing}: these factors cover {', '.join(factors.names)}")
        targets = [t for t in targets if t.name in want]
    delta, info = {}, {}
    for t in targets:
        e = eigens[t.name] if eigens and t.name in eigens else factors.eigen(t.name)
        mask = curvature_mask(e, keep, top_k)
        n_keep = int(mask.sum())
        W = t.weight.detach().double().cpu()
        new, rec = edit_weight(W, method, n_keep=n_keep, eig=e, mask=mask if method == "kfac" else None, seed=seed)
        if not bool(torch.isfinite(new).all()):
            raise FloatingPointError(f"the {method} edit of {t.name} produced non-finite weights: the model is untouched")
        delta[t.name] = (new - W).float()
        info[t.name] = {**rec, "n_keep": n_keep, "n_total": W.numel(),
                        "removed_norm_share": float((new - W).norm() / W.norm().clamp_min(1e-30))}
    cfg = {"method": method, "keep": keep, "top_k": top_k, "seed": seed, "model": _model_id(model),
           "fisher": factors.fisher, "factor_tokens": factors.n_tokens, "per_matrix": info}
    return Edit([t.record() for t in targets], delta, cfg)
