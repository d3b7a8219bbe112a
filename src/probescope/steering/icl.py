"""In-context learning and steering on one scale: the behaviour grid (shots N × strength m), the belief model and
the conversion "N shots ≡ strength m".

Behaviour: two functions compete on the same inputs (e.g. antonym vs uppercase). The prompt shows N
demonstrations of the *task* function; a steering vector is added with strength m at the last token of the
prompt at one layer (`resid_post.L`). The measured quantity per query is the two-way log-odds
`log p(task answer's first token) − log p(contrast answer's first token)` at the last position; a grid cell is
the mean over queries.

Belief model (Bigelow et al. 2025): `log-odds = a·m + b + γ·N^(1−α)` (fitted by least squares on the cell means:
α on a grid in [0, 0.99], a, b, γ exact for each α). Baseline: a plain logistic in (N, m), i.e. log-odds linear
in both, `c0 + cN·N + cm·m`. Flip boundary: N*(m) = ((−b − a·m)/γ)^(1/(1−α)). A strength m is worth ΔN shots on
top of N: γ[(N+ΔN)^(1−α) − N^(1−α)] = a·m; N shots are worth the strength m = γ·N^(1−α)/a.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .icl_tasks import IclTask, check_context, encode_left, first_token, icl_prompt

ALPHAS = np.round(np.arange(0.0, 0.991, 0.01), 4)
WEIGHT_FLOOR = 0.02  # cell_weights: a saturated cell still counts √0.02 ≈ 0.14 of a boundary cell (√0.27)


class NoEffectError(ValueError):
    """The behaviour does not move with the number of shots: there is nothing to fit."""


# --------------------------------------------------------------------------------------------------------------
# Forward passes: first-token log-probs at the last position, with a per-row steering strength.
# --------------------------------------------------------------------------------------------------------------


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(1) - 1).clamp_min(0)


@torch.no_grad()
def last_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, *, layer: int | None = None,
                  vector: torch.Tensor | None = None, strengths: torch.Tensor | None = None,
                  replace: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
    """[B, V] log-softmax at the last position. With `vector` and per-row `strengths` [B], adds strengths[i]·vector
    to row i's last token at `resid_post.layer`; with `replace` [d], sets the last token there instead."""
    from ..core.sites import site_hooks

    device = next(model.parameters()).device
    outs = []
    for s in range(0, ids.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        edits = {}
        if layer is not None and (vector is not None or replace is not None):
            ms = strengths[sl] if strengths is not None else None

            def fn(x: torch.Tensor, ms=ms) -> torch.Tensor:
                x = x.clone()
                if replace is not None:
                    x[:, -1] = replace.to(x.dtype).to(x.device)
                else:
                    x[:, -1] += ms.to(x.device, x.dtype)[:, None] * vector.to(x.device, x.dtype)[None]
                return x

            edits = {f"resid_post.{layer}": fn}
        m = mask[sl].to(device)
        with site_hooks(model, edits):
            logits = model(input_ids=ids[sl].to(device), attention_mask=m, position_ids=_positions(m),
                           use_cache=False).logits[:, -1]
        outs.append(torch.log_softmax(logits.float(), -1).cpu())
    return torch.cat(outs)


@torch.no_grad()
def last_resid(model: Any, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int], batch_size: int = 64
               ) -> dict[int, torch.Tensor]:
    """Residual stream after each block in `layers` at the last position: {layer: [B, d]}."""
    from ..core.sites import site_hooks

    device = next(model.parameters()).device
    got: dict[int, list[torch.Tensor]] = {L: [] for L in layers}

    def reader(L: int):
        def fn(x: torch.Tensor) -> None:
            got[L].append(x[:, -1].detach().float().cpu())
        return fn

    for s in range(0, ids.shape[0], batch_size):
        m = mask[s:s + batch_size].to(device)
        with site_hooks(model, {f"resid_post.{L}": reader(L) for L in layers}):
            model(input_ids=ids[s:s + batch_size].to(device), attention_mask=m, position_ids=_positions(m), use_cache=False)
    return {L: torch.cat(v) for L, v in got.items()}


# --------------------------------------------------------------------------------------------------------------
# The behaviour: task vs contrast on the same queries.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """Queries on which the task's and the contrast's answers start with different tokens, with fixed shot orders."""

    task: IclTask
    contrast: IclTask
    queries: list[str]
    answer_ids: list[int]
    wrong_ids: list[int]
    shot_orders: list[list[tuple[str, str]]]  # per query, a permutation of the other task pairs (N shots = first N)

    def prompts(self, n: int) -> list[str]:
        return [icl_prompt(order[:n], q) for q, order in zip(self.queries, self.shot_orders)]

    def contrast_prompts(self, n: int, rng_seed: int = 1) -> list[str]:
        rng = random.Random(rng_seed)
        out = []
        cpairs = self.contrast.pairs
        for q in self.queries:
            c = [p for p in cpairs if p[0] != q]
            out.append(icl_prompt(rng.sample(c, min(n, len(c))), q))
        return out


def contrast_answer(contrast: IclTask, x: str) -> str | None:
    if contrast.name == "uppercase":
        return x.upper()
    if contrast.name == "identity":
        return x
    return dict(contrast.pairs).get(x)


def make_behaviour(tok: Any, task: IclTask, contrast: IclTask, n_queries: int, seed: int = 0,
                   exclude: Sequence[str] = ()) -> Behaviour:
    rng = random.Random(seed)
    cands = []
    for x, y in task.pairs:
        c = contrast_answer(contrast, x)
        if c is None or x in exclude:
            continue
        a, w = first_token(tok, y), first_token(tok, c)
        if a != w:
            cands.append((x, a, w))
    if len(cands) < 4:
        raise ValueError(f"only {len(cands)} inputs of {task.name!r} have a {contrast.name!r} answer starting with a "
                         "different token: pick another contrast task")
    rng.shuffle(cands)
    cands = cands[:n_queries]
    orders = []
    for x, _, _ in cands:
        others = [p for p in task.pairs if p[0] != x]
        rng.shuffle(others)
        orders.append(others)
    return Behaviour(task, contrast, [c[0] for c in cands], [c[1] for c in cands], [c[2] for c in cands], orders)


def contrast_vector(model: Any, tok: Any, beh: Behaviour, layer: int, n_shots: int = 5, batch_size: int = 64
                    ) -> torch.Tensor:
    """Mean last-token residual at `layer` on task N-shot prompts minus on contrast N-shot prompts (same queries)."""
    ids_t, m_t = encode_left(tok, beh.prompts(n_shots))
    ids_c, m_c = encode_left(tok, beh.contrast_prompts(n_shots))
    a = last_resid(model, ids_t, m_t, [layer], batch_size)[layer]
    b = last_resid(model, ids_c, m_c, [layer], batch_size)[layer]
    return (a - b).mean(0)


@dataclass
class BeliefGrid:
    """Per-query log-odds `values[i, j, q]` for shots[i], strengths[j], query q."""

    shots: list[int]
    strengths: list[float]
    values: np.ndarray
    seconds: float = 0.0
    forwards: int = 0

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(-1)

    @property
    def prob(self) -> np.ndarray:
        """Mean two-way probability of the task answer, sigmoid(log-odds) averaged over queries."""
        return (1 / (1 + np.exp(-self.values))).mean(-1)

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        N, M = np.meshgrid(np.array(self.shots, float), np.array(self.strengths, float), indexing="ij")
        return N, M, self.mean


def measure_grid(model: Any, tok: Any, beh: Behaviour, shots: Sequence[int], strengths: Sequence[float],
                 vector: torch.Tensor, layer: int, batch_size: int = 64,
                 progress: Callable[[str], None] | None = None) -> BeliefGrid:
    """Log-odds of task vs contrast for every (N, m): one stack of rows per N (all strengths × queries), batched."""
    for n in shots:
        check_context(model, tok, beh.task, n)
    t0 = time.perf_counter()
    Q, S = len(beh.queries), len(strengths)
    vals = np.zeros((len(shots), S, Q))
    a, w = torch.tensor(beh.answer_ids), torch.tensor(beh.wrong_ids)
    fw = 0
    for i, n in enumerate(shots):
        ids, mask = encode_left(tok, beh.prompts(n))
        ids_r, mask_r = ids.repeat(S, 1), mask.repeat(S, 1)
        ms = torch.tensor(strengths, dtype=torch.float32).repeat_interleave(Q)
        lp = last_logprobs(model, ids_r, mask_r, layer=layer, vector=vector, strengths=ms, batch_size=batch_size)
        fw += math.ceil(ids_r.shape[0] / batch_size)
        rows = torch.arange(lp.shape[0])
        lo = (lp[rows, a.repeat(S)] - lp[rows, w.repeat(S)]).numpy().reshape(S, Q)
        vals[i] = lo
        if progress:
            progress(f"N={n}: log-odds {lo.mean(1).round(2).tolist()}")
    return BeliefGrid(list(shots), [float(x) for x in strengths], vals, time.perf_counter() - t0, fw)


# --------------------------------------------------------------------------------------------------------------
# The fits.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BeliefFit:
    """A fitted log-odds surface. form="published": a·m + b + γ·N^(1−α); form="logistic": c0 + cN·N + cm·m."""

    form: str
    params: dict[str, float]
    rmse: float = 0.0

    def predict(self, N: np.ndarray, m: np.ndarray) -> np.ndarray:
        N, m = np.asarray(N, float), np.asarray(m, float)
        p = self.params
        if self.form == "published":
            return p["a"] * m + p["b"] + p["gamma"] * np.power(np.maximum(N, 0), 1 - p["alpha"])
        return p["c0"] + p["cN"] * N + p["cm"] * m

    def flip_shots(self, m: float) -> float | None:
        """N*(m): the number of shots where the log-odds crosses 0 at strength m (None if it never does for N ≥ 0)."""
        p = self.params
        if self.form == "published":
            if p["gamma"] == 0:
                return None
            r = (-p["b"] - p["a"] * m) / p["gamma"]
            if r < 0:
                return None
            return float(r ** (1 / (1 - p["alpha"])))
        if p["cN"] == 0:
            return None
        n = -(p["c0"] + p["cm"] * m) / p["cN"]
        return float(n) if n >= 0 else None

    def shots_for_strength(self, m: float, N0: float = 0.0) -> float | None:
        """ΔN: the shots (on top of N0) with the same effect as strength m (None when no N ≥ 0 matches)."""
        p = self.params
        if self.form == "published":
            if p["gamma"] == 0:
                return None
            e = 1 - p["alpha"]
            inner = N0 ** e + p["a"] * m / p["gamma"]
            if inner < 0:
                return None
            return float(inner ** (1 / e) - N0)
        return float(p["cm"] * m / p["cN"]) if p["cN"] else None

    def strength_for_shots(self, N: float) -> float | None:
        """The strength m with the same effect as N shots (from zero shots)."""
        p = self.params
        if self.form == "published":
            return float(p["gamma"] * N ** (1 - p["alpha"]) / p["a"]) if p["a"] else None
        return float(p["cN"] * N / p["cm"]) if p["cm"] else None

    def to_dict(self) -> dict:
        return {"form": self.form, "params": {k: round(v, 6) for k, v in self.params.items()}, "rmse": self.rmse}


def cell_weights(y: np.ndarray, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """Per-cell least-squares weights √(p(1−p) + floor), p = σ(log-odds): the information a Bernoulli observation
    carries about its log-odds (the IRLS weight of logistic regression). Saturated cells (p near 0 or 1, where the
    measured log-odds plateaus and says little about the behaviour) count less than cells near the flip boundary;
    the floor keeps them in the fit."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(y, float)))
    return np.sqrt(p * (1 - p) + floor)


def _lstsq(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    return float((((X @ coef - y) * w) ** 2).sum() / (w ** 2).sum()), coef


def fit_published(N: np.ndarray, m: np.ndarray, y: np.ndarray, alphas: np.ndarray = ALPHAS,
                  weighted: bool = True) -> BeliefFit:
    """Least squares for log-odds = a·m + b + γ·N^(1−α) (weighted by `cell_weights` unless weighted=False): for
    each α on the grid, (a, b, γ) exactly; best α kept (then refined on a 0.001 grid around it)."""
    N, m, y = (np.asarray(v, float).ravel() for v in (N, m, y))
    if len(y) < 4:
        raise ValueError(f"{len(y)} grid cells: the published form has 4 parameters, give at least 4 cells")
    w = cell_weights(y) if weighted else np.ones_like(y)

    def solve(al: float):
        return _lstsq(np.stack([m, np.ones_like(m), np.power(N, 1 - al)], 1), y, w)

    best = min(((solve(a)[0], a) for a in alphas), key=lambda t: t[0])[1]
    fine = np.clip(np.arange(best - 0.01, best + 0.0101, 0.001), 0, 0.995)
    best = min(((solve(a)[0], a) for a in fine), key=lambda t: t[0])[1]
    mse, (a, b, g) = solve(best)
    return BeliefFit("published", {"a": float(a), "b": float(b), "gamma": float(g), "alpha": float(best)},
                     float(math.sqrt(mse)))


def fit_logistic(N: np.ndarray, m: np.ndarray, y: np.ndarray, weighted: bool = True) -> BeliefFit:
    """Baseline: log-odds = c0 + cN·N + cm·m (a logistic model linear in shots and strength), least squares with the
    same cell weights as the published form."""
    N, m, y = (np.asarray(v, float).ravel() for v in (N, m, y))
    w = cell_weights(y) if weighted else np.ones_like(y)
    mse, coef = _lstsq(np.stack([np.ones_like(m), N, m], 1), y, w)
    return BeliefFit("logistic", {"c0": float(coef[0]), "cN": float(coef[1]), "cm": float(coef[2])},
                     float(math.sqrt(mse)))


FITS = {"published": fit_published, "logistic": fit_logistic}


def checkerboard(shape: tuple[int, int]) -> np.ndarray:
    i, j = np.indices(shape)
    return (i + j) % 2 == 0


def measured_flips(shots: Sequence[int], strengths: Sequence[float], y: np.ndarray) -> dict[float, float]:
    """Per strength, the N where the measured log-odds first crosses 0 (linear interpolation between grid N)."""
    out = {}
    for j, m in enumerate(strengths):
        col = y[:, j]
        for i in range(len(shots) - 1):
            if col[i] == 0:
                out[float(m)] = float(shots[i])
                break
            if np.sign(col[i]) != np.sign(col[i + 1]):
                t = col[i] / (col[i] - col[i + 1])
                out[float(m)] = float(shots[i] + t * (shots[i + 1] - shots[i]))
                break
    return out


def heldout_eval(grid: BeliefGrid, form: str, weighted: bool = True) -> dict:
    """Fit on the checkerboard half of the cells, predict the other half: r, R², RMSE (unweighted), flip-boundary
    error."""
    N, M, Y = grid.cells()
    train = checkerboard(Y.shape)
    fit = FITS[form](N[train], M[train], Y[train], weighted=weighted)
    pred = fit.predict(N, M)
    yt, yp = Y[~train], pred[~train]
    r = float(np.corrcoef(yt, yp)[0, 1]) if yt.std() > 0 and yp.std() > 0 else float("nan")
    ss = float(((yt - yt.mean()) ** 2).sum())
    r2 = 1 - float(((yt - yp) ** 2).sum()) / ss if ss > 0 else float("nan")
    meas = measured_flips(grid.shots, grid.strengths, Y)
    # A boundary is the N where log-odds crosses 0, clipped to the grid: positive already at the first N → that N;
    # still negative at the last N → beyond the grid (inf). Errors compare the two; a column where exactly one
    # side is beyond the grid is a miss, its error at least (last N − the other side's boundary).
    lo, hi = min(grid.shots), max(grid.shots)
    errs, missed = {}, {}
    for j, m in enumerate(grid.strengths):
        n_meas = meas.get(float(m), lo if Y[0, j] > 0 else (math.inf if Y[-1, j] < 0 else None))
        n_pred = fit.flip_shots(m)
        if n_pred is None:
            n_pred = lo if float(fit.predict(lo, m)) > 0 else math.inf
        n_pred = max(lo, n_pred)
        if n_meas is None or (math.isinf(n_meas) and math.isinf(n_pred)) or (n_meas == lo and n_pred == lo):
            continue  # both say: no boundary inside the grid
        if math.isinf(n_meas) or n_pred > hi:
            missed[float(m)] = {"measured": None if math.isinf(n_meas) else n_meas,
                                "predicted": None if math.isinf(n_pred) else n_pred,
                                "error_at_least": hi - min(n_meas, n_pred)}
            continue
        errs[m] = abs(n_pred - n_meas)
    return {"fit": fit.to_dict(), "heldout_r": r, "heldout_r2": r2,
            "heldout_rmse": float(np.sqrt(((yt - yp) ** 2).mean())), "n_train": int(train.sum()),
            "n_heldout": int((~train).sum()), "flip_measured": meas,
            "flip_predicted": {m: fit.flip_shots(m) for m in grid.strengths},
            "flip_error_mean": float(np.mean(list(errs.values()))) if errs else None,
            "flip_error_max": float(np.max(list(errs.values()))) if errs else None,
            "flip_cols_compared": len(errs), "flip_missed": missed}


def check_effect(grid: BeliefGrid, min_effect: float = 0.5) -> dict:
    """Raise NoEffectError when the log-odds at strength 0 (or the strength nearest 0) does not move with N beyond
    noise: |Δ| < max(min_effect, 3 standard errors)."""
    j = int(np.argmin(np.abs(np.array(grid.strengths))))
    col = grid.values[:, j, :]  # [N, Q]
    d = col - col[0:1]
    means = d.mean(1)
    se = d.std(1, ddof=1) / math.sqrt(max(1, d.shape[1] - 1)) if d.shape[1] > 1 else np.zeros_like(means)
    k = int(np.argmax(np.abs(means)))
    thr = max(min_effect, 3 * float(se[k]))
    info = {"max_shift": float(means[k]), "at_shots": grid.shots[k], "threshold": thr, "strength": grid.strengths[j]}
    if abs(means[k]) < thr:
        raise NoEffectError(f"no measurable in-context effect: the log-odds moves at most {means[k]:+.3f} over "
                            f"N={grid.shots} shots (threshold {thr:.3f}), so there is no belief model to fit. Pick "
                            "a task the model learns from examples (see `steer icl --check-tasks` accuracies) or more shots")
    return info


def bootstrap(grid: BeliefGrid, n_boot: int = 200, seed: int = 0, strength: float = 1.0,
              shots_for: Sequence[int] = (1, 2, 4, 8), weighted: bool = True) -> dict:
    """Resample queries, refit the published form on all cells: percentile intervals of ΔN(m=strength, N0=0),
    m(N) and the flip points."""
    rng = np.random.default_rng(seed)
    Q = grid.values.shape[-1]
    N, M, _ = grid.cells()
    dn, flips, mN = [], {m: [] for m in grid.strengths}, {n: [] for n in shots_for}
    for _ in range(n_boot):
        idx = rng.integers(0, Q, Q)
        fit = fit_published(N, M, grid.values[:, :, idx].mean(-1), alphas=np.arange(0, 0.991, 0.03), weighted=weighted)
        v = fit.shots_for_strength(strength)
        dn.append(np.nan if v is None else v)
        for m in grid.strengths:
            f = fit.flip_shots(m)
            flips[m].append(np.nan if f is None else f)
        for n in shots_for:
            s = fit.strength_for_shots(n)
            mN[n].append(np.nan if s is None else s)

    def ci(xs):
        xs = np.asarray(xs, float)
        ok = xs[np.isfinite(xs)]
        if len(ok) < max(10, 0.5 * len(xs)):
            return None
        return [float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))]

    return {"n_boot": n_boot, "shots_per_strength": {"strength": strength, "ci95": ci(dn)},
            "strength_for_shots_ci95": {n: ci(v) for n, v in mN.items()},
            "flip_ci95": {m: ci(v) for m, v in flips.items()}}


def synthetic_grid(a: float, b: float, gamma: float, alpha: float, shots: Sequence[int], strengths: Sequence[float],
                   n_queries: int = 30, noise: float = 0.3, seed: int = 0) -> BeliefGrid:
    """A grid from known parameters plus per-query Gaussian noise (for tests)."""
    rng = np.random.default_rng(seed)
    N, M = np.meshgrid(np.array(shots, float), np.array(strengths, float), indexing="ij")
    y = a * M + b + gamma * np.power(N, 1 - alpha)
    vals = y[..., None] + rng.normal(0, noise, (*y.shape, n_queries))
    return BeliefGrid(list(shots), list(strengths), vals)


# --------------------------------------------------------------------------------------------------------------
# Task vectors (mean difference), accuracy, and the vector made for the grid.
# --------------------------------------------------------------------------------------------------------------


def task_vectors(model: Any, tok: Any, beh: Behaviour, layers: Sequence[int], n_shots: int = 5, batch_size: int = 64
                 ) -> dict[int, torch.Tensor]:
    """Mean-difference task vector per layer: mean last-token residual on N-shot prompts minus on 0-shot prompts."""
    ids_t, m_t = encode_left(tok, beh.prompts(n_shots))
    ids_0, m_0 = encode_left(tok, beh.prompts(0))
    A = last_resid(model, ids_t, m_t, layers, batch_size)
    Z = last_resid(model, ids_0, m_0, layers, batch_size)
    return {L: A[L].mean(0) - Z[L].mean(0) for L in layers}


def behaviour_scores(model: Any, tok: Any, beh: Behaviour, n_shots: int, layer: int | None = None,
                     vector: torch.Tensor | None = None, strength: float = 1.0, batch_size: int = 64) -> dict:
    """First-token accuracy of the task answer and mean two-way log-odds (task vs contrast) at N shots."""
    ids, mask = encode_left(tok, beh.prompts(n_shots))
    ms = torch.full((ids.shape[0],), float(strength))
    lp = last_logprobs(model, ids, mask, layer=layer if vector is not None else None, vector=vector, strengths=ms,
                       batch_size=batch_size)
    a, w = torch.tensor(beh.answer_ids), torch.tensor(beh.wrong_ids)
    r = torch.arange(len(a))
    return {"accuracy": float((lp.argmax(-1) == a).float().mean()), "log_odds": float((lp[r, a] - lp[r, w]).mean()),
            "answer_logprob": float(lp[r, a].mean()), "prompt_tokens": float(mask.sum(1).float().mean())}


def check_vector(model: Any, vector: Any, layer: int | None = None) -> tuple[torch.Tensor, int]:
    """(direction, layer) from a SteeringVector or a raw tensor, with clear errors for another model/width/site."""
    from ..core.hooks import d_model
    from ..core.sites import n_layers
    from .vector import SteeringVector

    if isinstance(vector, SteeringVector):
        vector.check_model(model)
        L = vector.layers[0] if layer is None else layer
        if L not in vector.directions:
            raise ValueError(f"this steering vector has layers {vector.layers}, not {L}: pass one of them")
        v = vector.directions[L]
    else:
        if layer is None:
            raise ValueError("a raw tensor does not say which layer it belongs to: pass layer=<block index>")
        v, L = torch.as_tensor(vector).float(), int(layer)
    d = d_model(model)
    if v.shape != (d,):
        raise ValueError(f"the vector has shape {tuple(v.shape)} but the model's residual width is {d}: it was made "
                         "for another model; make one on this model (`probescope steer make` or `steer icl`)")
    nl = n_layers(model)
    if not 0 <= L < nl:
        raise ValueError(f"layer {L} does not exist: the model has layers 0..{nl - 1} (resid_post.L sites)")
    return v, L
