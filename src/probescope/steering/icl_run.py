"""`run_icl`: the ICL ↔ steering job (task check, grid, belief fits, conversion, vector → ICL, function vectors)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.options import ModelOptions, RunOptions, option
from ..tasks.icl import TASKS


def _ints(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in str(s).split(",") if x.strip()]


@dataclass
class IclConfig(ModelOptions, RunOptions):
    """Steering and in-context learning on one scale: shots × strength grid, belief-model fits, conversion."""

    task: str = option("antonym", "the behaviour's function: antonym, capital, past, plural, next_letter, uppercase",
                       choices=tuple(TASKS))
    contrast: str = option("uppercase", "the competing function on the same inputs", choices=tuple(TASKS))
    shots: str = option("0,1,2,3,4,6,8", "comma-separated numbers of shots N", csv=True, min=0)
    strengths: str = option("-1.5,-1,-0.5,0,0.5,1,1.5", "comma-separated steering strengths m (both signs; past about "
                            "±1.5 the vector breaks the model and log-odds plateau, see docs/steering.md)", csv=True)
    weighted: bool = option(True, "weight each cell by its Bernoulli information √(p(1−p)+0.02) in the fits (off: "
                                  "plain least squares on log-odds; both are reported)", flag="--weighted/--unweighted")
    layers: str = option("", "candidate layers for the vector (sweep); empty: 40-80% depth")
    vector: str = option("", "a saved SteeringVector folder to use instead of the mean-difference task vector")
    vector_shots: int = option(5, "shots of the prompts the task vector is read from", min=1)
    n_queries: int = option(32, "queries per grid cell", min=2)
    n_dev: int = option(16, "queries that make the vector and choose its layer", min=2)
    n_boot: int = option(200, "bootstrap resamples (over queries)", min=1)
    check_tasks: str = option("", "comma-separated tasks to test few-shot (0 vs N shots); empty: skip",
                              choices=tuple(TASKS), sep=",")
    fv: bool = option(False, "also build function vectors (head search) for the checked tasks it can do")
    fv_top_k: int = option(10, "heads summed into a function vector", min=1)
    batch_size: int = option(64, "rows per forward")
    out: str = option("runs/steer-icl", "run folder: metrics.json, report.html")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task == self.contrast:
            raise ValueError(f"--task and --contrast are both {self.task!r}: pick two different functions")
        sh, st = _ints(self.shots), _floats(self.strengths)
        if len(sh) < 2:
            raise ValueError(f"--shots {self.shots!r}: give at least two numbers of shots ≥ 0, e.g. 0,1,2,4,8")
        if len(st) < 2:
            raise ValueError(f"--strengths {self.strengths!r}: give at least two strengths, e.g. -1,0,1")
        if len(sh) * len(st) < 8:
            raise ValueError(f"{len(sh)}×{len(st)} cells (--shots × --strengths): the checkerboard fit needs at least "
                             "8 cells; give more shots or strengths")


def run_icl(cfg: IclConfig, model: Any = None, tokenizer: Any = None) -> dict:
    """The shots × strength grid, the belief-model fits, the conversion and its check; into the run folder `out`."""
    from ..core.models import model_id
    from ..core.sites import n_layers
    from ..report.job import open_job
    from . import icl
    from .icl_tasks import IclTask

    t_start = time.perf_counter()
    with open_job(cfg, "steering-icl", model, tokenizer) as job:
        model, tokenizer = job.model, job.tokenizer
        if cfg.layers:
            job.layers(_ints(cfg.layers))  # checked against the model before anything is written, never wrapped
        run = job.run
        run.write_config(cfg)
        res: dict[str, Any] = {"model": model_id(model), "task": cfg.task, "contrast": cfg.contrast}
        plots: list[dict] = []

        if cfg.check_tasks.strip():
            res["tasks"] = check_tasks(model, tokenizer, [t.strip() for t in cfg.check_tasks.split(",") if t.strip()],
                                       cfg, fv=cfg.fv)

        task, con = IclTask.builtin(cfg.task), IclTask.builtin(cfg.contrast)
        dev = icl.make_behaviour(tokenizer, task, con, cfg.n_dev, seed=cfg.seed + 1)
        beh = icl.make_behaviour(tokenizer, task, con, cfg.n_queries, seed=cfg.seed, exclude=dev.queries)
        nl = n_layers(model)
        if cfg.vector:
            from .vector import SteeringVector

            v, layer = icl.check_vector(model, SteeringVector.load(cfg.vector),
                                        _ints(cfg.layers)[0] if cfg.layers else None)
            res["vector"] = {"source": cfg.vector, "layer": layer, "norm": float(v.norm())}
        else:
            cands = _ints(cfg.layers) or sorted({int(round(nl * f)) for f in (0.4, 0.5, 0.6, 0.7, 0.8)})
            tvs = icl.task_vectors(model, tokenizer, dev, cands, cfg.vector_shots, cfg.batch_size)
            sweep = {L: icl.behaviour_scores(model, tokenizer, dev, 0, L, tvs[L], 1.0, cfg.batch_size)["log_odds"]
                     for L in cands}
            layer = max(sweep, key=sweep.get)
            v = tvs[layer]
            res["vector"] = {"source": f"mean-difference task vector ({cfg.vector_shots}-shot − 0-shot, last token)",
                             "layer": layer, "norm": float(v.norm()), "layer_sweep_log_odds": sweep}
        grid = icl.measure_grid(model, tokenizer, beh, _ints(cfg.shots), _floats(cfg.strengths), v, layer,
                                cfg.batch_size)
        res["grid"] = {"shots": grid.shots, "strengths": grid.strengths, "log_odds": np.round(grid.mean, 4).tolist(),
                       "prob": np.round(grid.prob, 4).tolist(), "seconds": grid.seconds, "forwards": grid.forwards,
                       "n_queries": len(beh.queries)}
        try:
            res["effect"] = icl.check_effect(grid)
        except icl.NoEffectError as e:
            res["effect"] = {"error": str(e)}
            res["fit"] = None
            run.write_metrics({**res, "plots": plots}, report=False)
            res["run_dir"] = str(run.path)
            return res
        fits = {form: icl.heldout_eval(grid, form, cfg.weighted) for form in icl.FITS}
        N, M, Y = grid.cells()
        full = icl.fit_published(N, M, Y, weighted=cfg.weighted)
        res["fits"] = fits
        res["fits_weighting"] = ("Bernoulli information √(p(1−p)+0.02) per cell" if cfg.weighted else
                                 "none (plain least squares on log-odds)")
        res["fits_other_weighting"] = {form: icl.heldout_eval(grid, form, not cfg.weighted) for form in icl.FITS}
        res["fit_full"] = full.to_dict()
        boot = icl.bootstrap(grid, cfg.n_boot, cfg.seed, weighted=cfg.weighted)
        res["bootstrap"] = boot
        res["conversion"] = {
            "shots_for_strength": {m: full.shots_for_strength(m) for m in grid.strengths if m > 0},
            "strength_for_shots": {n: full.strength_for_shots(n) for n in grid.shots if n > 0},
            "flip_points": {m: full.flip_shots(m) for m in grid.strengths},
        }
        res["vector_to_icl"] = vector_to_icl(model, tokenizer, beh, full, v, layer, grid, cfg)
        plots += _plots(grid, full, fits)
        res["seconds"] = time.perf_counter() - t_start
        run.write_metrics({**res, "plots": plots}, report=False)
    res["run_dir"] = str(run.path)
    return res


def vector_to_icl(model, tok, beh, fit, v, layer, grid, cfg) -> list[dict]:
    """For each positive strength: the shots the fit says match it (from 0 shots), verified by running them."""
    from . import icl
    from .icl_tasks import check_context

    rows = []
    for m in grid.strengths:
        if m <= 0:
            continue
        dn = fit.shots_for_strength(m)
        row: dict[str, Any] = {"strength": m, "predicted_shots": dn}
        if dn is None or not math.isfinite(dn):
            row["note"] = "no number of shots matches this strength in the fitted model"
            rows.append(row)
            continue
        n = int(round(dn))
        try:
            check_context(model, tok, beh.task, n)
        except ValueError as e:
            row["note"] = str(e)
            rows.append(row)
            continue
        steered = icl.behaviour_scores(model, tok, beh, 0, layer, v, m, cfg.batch_size)
        shots = icl.behaviour_scores(model, tok, beh, n, batch_size=cfg.batch_size)
        row.update(shots_run=n, vector_log_odds=steered["log_odds"], shots_log_odds=shots["log_odds"],
                   gap=shots["log_odds"] - steered["log_odds"], vector_accuracy=steered["accuracy"],
                   shots_accuracy=shots["accuracy"])
        rows.append(row)
    return rows


def check_tasks(model, tok, names, cfg, fv: bool = False) -> dict:
    """0-shot vs N-shot first-token accuracy per task; a task that gains < 0.2 is reported and skipped."""
    from . import icl
    from .icl_tasks import IclTask

    out = {}
    for name in names:
        task = IclTask.builtin(name)
        other = IclTask.builtin("identity")  # the answer vs copying the input
        try:
            beh = icl.make_behaviour(tok, task, other, cfg.n_queries, seed=cfg.seed)
        except ValueError as e:
            out[name] = {"skipped": str(e)}
            continue
        z = icl.behaviour_scores(model, tok, beh, 0, batch_size=cfg.batch_size)
        f = icl.behaviour_scores(model, tok, beh, cfg.vector_shots, batch_size=cfg.batch_size)
        row = {"acc_0shot": z["accuracy"], f"acc_{cfg.vector_shots}shot": f["accuracy"],
               "can_do": f["accuracy"] - z["accuracy"] >= 0.2}
        if not row["can_do"]:
            row["skipped"] = (f"{model_id_of(model)} does not learn {name!r} from {cfg.vector_shots} examples "
                              f"(accuracy {z['accuracy']:.2f} → {f['accuracy']:.2f}): skipped")
        elif fv:
            from .fv import compare_vectors

            row.update(compare_vectors(model, tok, task, cfg))
        out[name] = row
    return out


def model_id_of(model) -> str:
    from ..core.models import model_id

    return model_id(model)


def _plots(grid, fit, fits) -> list[dict]:
    N, M, Y = grid.cells()
    P = fit.predict(N, M)
    plots = [
        {"type": "heatmap", "title": "Measured log-odds (task vs contrast): shots × strength",
         "rows": [f"N={n}" for n in grid.shots], "cols": [f"m={m:g}" for m in grid.strengths],
         "values": np.round(Y, 3).tolist(), "fmt": ".1f", "signed": True, "x_label": "steering strength m",
         "y_label": "shots N", "value_label": "log-odds (task vs contrast)"},
        {"type": "heatmap", "title": "Belief model a·m + b + γ·N^(1−α), fitted on all cells",
         "rows": [f"N={n}" for n in grid.shots], "cols": [f"m={m:g}" for m in grid.strengths],
         "values": np.round(P, 3).tolist(), "fmt": ".1f", "signed": True, "x_label": "steering strength m",
         "y_label": "shots N", "value_label": "predicted log-odds"},
    ]
    ms = [m for m in grid.strengths if m > 0]
    dn = [fit.shots_for_strength(m) for m in ms]
    pts = [(m, d) for m, d in zip(ms, dn) if d is not None and math.isfinite(d)]
    if pts:
        plots.append({"type": "line", "title": "Conversion: shots worth a strength m (from 0 shots)",
                      "x_label": "strength m", "y_label": "shots ΔN",
                      "series": [{"name": "published fit", "x": [p[0] for p in pts], "y": [p[1] for p in pts]}]})
    return plots
