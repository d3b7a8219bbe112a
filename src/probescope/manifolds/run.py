"""`run_find` and `run_move`: the manifold jobs, each writing a run folder (config, metrics, manifold.json, page)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..core.io import atomic_write_json
from ..core.progress import progress
from ..report.job import open_job
from .concepts import ConceptData, load_concept
from .config import FindConfig, LineBreakConfig, MoveConfig, TransformConfig
from .flow import flow_plots, layer_flow
from .geometry import fit_circle, fit_curve, layer_report, pca, value_means


def check_concept(data: ConceptData, min_per_value: int) -> None:
    """Refuse a concept with fewer than 3 values or a value with fewer than `min_per_value` examples."""
    counts = Counter(e.value for e in data.examples)
    if len(counts) < 3:
        raise ValueError(f"concept {data.name!r} has {len(counts)} distinct value(s) {sorted(counts)}: a shape "
                         "needs at least 3 values")
    few = {v: c for v, c in sorted(counts.items()) if c < min_per_value}
    if few:
        shown = ", ".join(f"{data.label(v)}: {c}" for v, c in list(few.items())[:8])
        raise ValueError(f"concept {data.name!r}: {len(few)} value(s) have fewer than {min_per_value} examples "
                         f"({shown}{', …' if len(few) > 8 else ''}); each value needs ≥ {min_per_value} "
                         f"(--min-per-value): add examples (--n ≥ {min_per_value * len(counts)} for built-ins) or "
                         "drop those values")
    if data.period is not None and any(v < 0 or v >= data.period for v in counts):
        raise ValueError(f"concept {data.name!r}: values {sorted(counts)} must lie in 0..{data.period - 1} for "
                         f"period {data.period}")


def shape_points(X: np.ndarray, v: np.ndarray, period: int | None, k: int, n_points: int = 160,
                 seed: int = 0) -> dict[str, Any]:
    """What the page draws for one layer: means, a sample of examples and the fitted shape, in the means' top 3 PCs."""
    vals, M = value_means(X, v)
    kk = max(1, min(k, len(vals) - 1))
    mu, U3, ratio = pca(M, 3)
    proj = lambda P: np.round((np.atleast_2d(P) - mu) @ U3.T, 4).tolist()  # noqa: E731
    if period:
        shape = fit_circle(M, vals, period, kk)
        fit = shape.point(np.linspace(0, 2 * np.pi, 97))
    else:
        shape = fit_curve(M, vals, kk)
        fit = shape.point(np.linspace(vals.min(), vals.max(), 97))
    idx = np.random.default_rng(seed).permutation(len(v))[:n_points]
    return {"values": vals.tolist(), "means": proj(M), "fit": proj(fit), "points": proj(X[idx]),
            "point_values": v[idx].tolist(), "var3": [float(r) for r in ratio[:3]]}


def _layer_plots(rows: list[dict], cyclic: bool, concept: str) -> list[dict]:
    xs = [r["layer"] for r in rows]
    key = "r2_plane" if cyclic else "r2"
    what = "circle R² (best PCA plane)" if cyclic else "curve R² (spline, k-dim PCA)"
    unit = "angle error (°)" if cyclic else "value error"
    return [
        {"type": "line", "title": f"{concept}: {what} per layer, beside shuffled values", "x_label": "layer",
         "y_label": "R²", "series": [{"name": "real values", "x": xs, "y": [r[key] for r in rows]},
                                     {"name": "shuffled (mean)", "x": xs, "y": [r["baseline"][key] for r in rows]},
                                     {"name": "shuffled (95th pct)", "x": xs, "y": [r["baseline_p95"][key] for r in rows]},
                                     {"name": "order permuted (mean)", "x": xs,
                                      "y": [r["baseline_order"][key] for r in rows]},
                                     {"name": "order permuted (95th pct)", "x": xs,
                                      "y": [r["baseline_order_p95"][key] for r in rows]}]},
        {"type": "line", "title": f"{concept}: leave-one-value-out {unit} per layer", "x_label": "layer",
         "y_label": unit, "series": [{"name": "real values", "x": xs, "y": [r["loo"] for r in rows]},
                                     {"name": "shuffled (mean)", "x": xs, "y": [r["baseline"]["loo"] for r in rows]},
                                     {"name": "order permuted (mean)", "x": xs,
                                      "y": [r["baseline_order"]["loo"] for r in rows]}]},
        {"type": "line", "title": f"{concept}: held-out R² of a linear read-out of the "
                                   f"{'angle (cos, sin)' if cyclic else 'value'} per layer", "x_label": "layer",
         "y_label": "R²", "series": [{"name": "real values", "x": xs, "y": [r["probe"] for r in rows]},
                                     {"name": "shuffled (95th pct)", "x": xs,
                                      "y": [r["baseline_p95"]["probe"] for r in rows]}]},
        {"type": "line", "title": f"{concept}: PCA axes for 90% of the means' variance", "x_label": "layer",
         "y_label": "axes", "series": [{"name": "dims90", "x": xs, "y": [r["dims90"] for r in rows]}]},
    ]


def find_layers(acts: dict[int, np.ndarray], v: np.ndarray, period: int | None, k: int, n_shuffles: int,
                seed: int = 0, quiet: bool | None = None, groups: np.ndarray | None = None) -> list[dict]:
    """`layer_report` of every layer in `acts`, in layer order."""
    rows = []
    with progress(len(acts), "fitting shapes", unit="layer", quiet=quiet) as bar:
        for L in sorted(acts):
            rows.append({"layer": int(L), **layer_report(acts[L].astype(np.float64), v, period, k, n_shuffles, seed,
                                                         groups)})
            bar.advance()
    return rows


def read_sets(spec: list[list[int]] | str, rows: list[dict], layers: list[int]) -> list[list[int]]:
    """The layer sets to read out together: those given (each layer must have been read), or for 'auto' the three
    layers with the best single-layer read-out (none when fewer than 4 layers were read)."""
    if spec == "auto":
        best = sorted(rows, key=lambda r: -r["probe"])[:3]
        return [sorted(r["layer"] for r in best)] if len(rows) >= 4 else []
    for s in spec:
        missing = [L for L in s if L not in layers]
        if missing:
            raise ValueError(f"--probe-sets: layer(s) {missing} are not among the layers read ({layers}); add them to "
                             "--layers")
    return spec


def set_readouts(acts: dict[int, np.ndarray], sets: list[list[int]], v: np.ndarray, period: int | None,
                 n_shuffles: int, seed: int = 0, groups: np.ndarray | None = None) -> list[dict]:
    """Per layer set: the linear read-out from its layers' residuals side by side, beside shuffled values."""
    from .geometry import readout_report

    return [{"layers": "+".join(map(str, s)),
             **readout_report(np.concatenate([acts[L].astype(np.float64) for L in s], 1), v, period, n_shuffles,
                              seed, groups)} for s in sets]


def text_groups(examples: list) -> np.ndarray | None:
    """The text index of each example when some text gives several (the folds then keep texts whole), else None."""
    ids: dict[str, int] = {}
    g = np.array([ids.setdefault(e.text, len(ids)) for e in examples])
    return g if len(ids) < len(g) else None


def summarize_find(rows: list[dict], cyclic: bool) -> dict[str, Any]:
    """The best layer by the headline R², whether it beats both baselines' 95th percentiles, and its numbers; the
    layer with the best held-out linear read-out (`probe`) beside its shuffled baseline."""
    key = "r2_plane" if cyclic else "r2"
    best = max(rows, key=lambda r: r[key])
    pb = max(rows, key=lambda r: r["probe"])
    found = all(best[key] > best[b + "_p95"][key] and best["loo"] < best[b + "_p95"]["loo"]
                for b in ("baseline", "baseline_order"))
    return {"score": key, "best_layer": best["layer"], "best_r2": best[key], "best_r2_baseline": best["baseline"][key],
            "best_r2_baseline_p95": best["baseline_p95"][key], "best_r2_order": best["baseline_order"][key],
            "best_r2_order_p95": best["baseline_order_p95"][key], "best_loo": best["loo"],
            "best_loo_baseline": best["baseline"]["loo"], "best_loo_order": best["baseline_order"]["loo"],
            "best_cv": best["cv"], "best_dims90": best["dims90"], "best_probe": best["probe"],
            "probe_layer": pb["layer"], "probe": pb["probe"], "probe_baseline": pb["baseline"]["probe"],
            "probe_baseline_p95": pb["baseline_p95"]["probe"], "probe_order_p95": pb["baseline_order_p95"]["probe"],
            "verdict": "manifold found" if found else "no manifold found (the best layer does not beat the 95th "
                                                      "percentile of both baselines — values shuffled across "
                                                      "examples, and values permuted as wholes — on R² and LOO error)"}


def run_find(cfg: FindConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Per layer: the concept's means, PCA, circle/curve fit, LOO and two-fold errors, dims — beside shuffles."""
    from ..core.models import model_id
    from .acts import concept_acts

    data = load_concept(cfg.concept, cfg.n, cfg.seed, cfg.period or None)
    check_concept(data, cfg.min_per_value)
    # the job's threads hold for numpy's BLAS too: oversubscribed, the fits run 15× slower here
    with open_job(cfg, "manifold-find", model, tokenizer) as job:
        model, layers = job.model, job.layers(cfg.layers)
        if cfg.read_sets != "auto":
            read_sets(cfg.read_sets, [], list(layers))  # a set outside the layers read: refused before anything
        run = job.run
        run.write_config(cfg)
        acts = concept_acts(model, job.tokenizer, data.examples, layers, cfg.batch_size)
        v = np.array([e.value for e in data.examples])
        groups = text_groups(data.examples)
        rows = find_layers(acts, v, data.period, cfg.k, cfg.n_shuffles, cfg.seed, groups=groups)
        sets = set_readouts(acts, read_sets(cfg.read_sets, rows, list(layers)), v, data.period, cfg.n_shuffles,
                            cfg.seed, groups)
        flow = layer_flow(acts, v, data.period, cfg.k, cfg.n_shuffles, cfg.seed)
        shapes = {str(L): shape_points(acts[L].astype(np.float64), v, data.period, cfg.k, seed=cfg.seed)
                  for L in layers}
    summary = {"model": model_id(model), "concept": data.name, "period": data.period, "n_examples": len(v),
               "n_values": int(len(np.unique(v))), "example": {"text": data.examples[0].text,
                                                                "position": data.examples[0].position,
                                                                "value": data.examples[0].value},
               "folds_by_text": groups is not None, "probe_sets": sets,
               "best_probe_set": max(sets, key=lambda r: r["probe"]) if sets else None,
               **summarize_find(rows, data.period is not None)}
    atomic_write_json(run.path / "manifold.json", {"concept": data.name, "period": data.period,
                                                   "labels": {str(u): data.label(int(u)) for u in np.unique(v)},
                                                   "layers": rows, "shapes": shapes})
    plots = _layer_plots(rows, data.period is not None, data.name) + flow_plots(flow, data.name,
                                                                                data.period is not None)
    run.write_metrics({**summary, "layers": rows, "flow": flow, "plots": plots}, report=False)
    return {"run_dir": str(run.path), **summary, "layers": rows, "flow": flow}


# ----------------------------------------------------------------------------------------------------------
# Move
# ----------------------------------------------------------------------------------------------------------


def run_move(cfg: MoveConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """The circle intervention per layer (and layer set) and strength, beside every baseline and the token swap."""
    from ..core.models import model_id
    from ..core.sites import check_layers
    from .move import (METHODS, Answers, answer_ids, arithmetic_prompts, build_rows, context_prompts, edit_hooks,
                       fit_layers, position_fits, prompt_batch, rate)

    prompts, names, period = arithmetic_prompts(cfg.task)
    with open_job(cfg, "manifold-move", model, tokenizer) as job:
        model, tokenizer, layers = job.model, job.tokenizer, job.layers(cfg.layers)
        sets = [check_layers(model, s) for s in cfg.sets]
        cand = answer_ids(tokenizer, names)
        run = job.run
        run.write_config(cfg)
        rows = build_rows(tokenizer, prompts, period, limit=cfg.limit or None, seed=cfg.seed)
        need = sorted(set(layers) | {L for s in sets for L in s})
        fit_on = context_prompts(cfg.task, cfg.fit_contexts) if cfg.fit_contexts else None
        if cfg.positions == "concept":
            fits = fit_layers(model, tokenizer, prompts, need, period, cfg.k, cfg.batch_size, fit_on)
        else:
            fits = position_fits(model, tokenizer, prompts, need, period, cfg.k, cfg.positions, cfg.batch_size, fit_on)
        # unedited answers of every prompt: the model's accuracy, the token swap and the no-edit rows
        ids, mask, pos, _ = prompt_batch(tokenizer, prompts)
        plain = Answers(model, ids, mask, pos, cand, cfg.batch_size)()
        score = Answers(model, rows.ids, rows.mask, rows.pos, cand, cfg.batch_size)
        truth = np.array([(p.value + p.offset) % period for p in prompts])
        base = {"accuracy": rate(plain == truth), "token_swap": rate(plain[rows.source] == rows.expect),
                "no_edit": rate(plain[rows.prompt] == rows.expect)}
        grid = [(m, s) for m in METHODS for s in (cfg.strengths if m == "circle" else [1.0])]
        units = [[L] for L in layers] + sets
        table = []
        with progress(len(units) * len(grid), "editing", unit="run") as bar:
            for unit in units:
                for method, s in grid:
                    hooks = edit_hooks(method, {L: fits[L] for L in unit}, rows, s)
                    got = score(hooks)
                    table.append({"layers": "+".join(map(str, unit)), "method": method, "strength": s,
                                  **rate(got == rows.expect)})
                    bar.advance()
    # at the reader positions: the mean circle R² over the (template, offset) fits of the layer
    circle_r2 = {str(L): (float(np.mean([f.circle.r2 for f in fits[L].values()])) if isinstance(fits[L], dict)
                          else fits[L].circle.r2) for L in need}
    summary = {"model": model_id(model), "task": cfg.task, "positions": cfg.positions, "n_prompts": len(prompts),
               "n_rows": int(len(rows.target)), "fit_prompts": len(fit_on) if fit_on else len(prompts),
               "circle_r2": circle_r2, **base, **summarize_move(table, base)}
    atomic_write_json(run.path / "move.json", {"rows": table, "baselines": base, "circle_r2": circle_r2})
    run.write_metrics({**summary, "rows": table, "plots": _move_plots(table, base, cfg.task)}, report=False)
    return {"run_dir": str(run.path), **summary, "rows": table}


def summarize_move(table: list[dict], base: dict) -> dict[str, Any]:
    """The best circle edit (layer set and strength) and every baseline at that layer set."""
    circ = [r for r in table if r["method"] == "circle"]
    best = max(circ, key=lambda r: r["success"])
    at = {r["method"] + (f"@{r['strength']:g}" if r["method"] == "circle" else ""): r["success"]
          for r in table if r["layers"] == best["layers"]}
    return {"best": {"layers": best["layers"], "strength": best["strength"], "success": best["success"],
                     "ci": best["ci"], "token_swap": base["token_swap"]["success"], "at_best_layers": at}}


def _move_plots(table: list[dict], base: dict, task: str) -> list[dict]:
    single = [r for r in table if "+" not in r["layers"]]
    xs = sorted({int(r["layers"]) for r in single})
    series = []
    for (m, s) in dict.fromkeys((r["method"], r["strength"]) for r in single):
        name = f"{m} ×{s:g}" if m == "circle" else m
        ys = {int(r["layers"]): r["success"] for r in single if r["method"] == m and r["strength"] == s}
        series.append({"name": name, "x": xs, "y": [ys[x] for x in xs]})
    series.append({"name": "token swap", "x": xs, "y": [base["token_swap"]["success"]] * len(xs)})
    return [{"type": "line", "title": f"{task}: the target becomes the top answer (share of rows), per layer edited",
             "x_label": "layer", "y_label": "success", "series": series}]


# ----------------------------------------------------------------------------------------------------------
# Transform: which components carry the value to the answer, and in what form the answer is held
# ----------------------------------------------------------------------------------------------------------


def run_transform(cfg: TransformConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Patching of every head and MLP between start x and x + 1, then the form of the answer (circle or sum) at
    the last token of every layer and in the top components' outputs, each beside its shuffled baseline."""
    from ..core.models import model_id
    from ..core.sites import parse_site
    from .move import Answers, answer_ids, arithmetic_prompts, prompt_batch, rate
    from .transform import (answer_metric, answer_tokens, component_effects, contrast_pairs, form_scores, last_token_acts,
                            prompt_ids, top_components, verdict)

    prompts, names, period = arithmetic_prompts(cfg.task)
    with open_job(cfg, "manifold-transform", model, tokenizer) as job:
        model, tokenizer, layers = job.model, job.tokenizer, job.layers(cfg.layers)
        names_ids = answer_ids(tokenizer, names)
        prefix, first = answer_tokens(names_ids)
        answers = [first[(p.value + p.offset) % period] for p in prompts]
        seqs = prompt_ids(tokenizer, prompts, prefix)
        pairs = contrast_pairs(seqs, prompts, answers, period)
        if len(pairs) < cfg.folds * 2:
            raise ValueError(f"--task {cfg.task}: only {len(pairs)} (start, start + 1) prompt pairs have equal token "
                             f"counts and distinct answer tokens with this tokenizer; --folds {cfg.folds} needs "
                             f"≥ {cfg.folds * 2}: lower --folds")
        run = job.run
        run.write_config(cfg)
        ids, mask, pos, _ = prompt_batch(tokenizer, prompts)
        said = Answers(model, ids, mask, pos, names_ids, cfg.batch_size)()
        accuracy = rate(said == np.array([(p.value + p.offset) % period for p in prompts]))
        effects = component_effects(model, tokenizer, seqs, pairs, answer_metric(answers), cfg.folds, cfg.batch_size, cfg.seed)
        top = top_components(effects, cfg.top)
        sites = [parse_site(f"resid_post.{L}") for L in layers] + [parse_site(c["site"]) for c in top]
        acts = last_token_acts(model, tokenizer, seqs, sites, cfg.batch_size)
        rows = []
        with progress(len(layers) + len(top), "scoring the answer's form", unit="site") as bar:
            for L, s in zip(layers, sites):
                form = form_scores(acts[s], prompts, period, cfg.k, cfg.n_shuffles, cfg.seed)
                rows.append({"layer": L, **form, "verdict": verdict(form)})
                bar.advance()
            for c, s in zip(top, sites[len(layers):]):
                c["form"] = form_scores(acts[s], prompts, period, cfg.k, cfg.n_shuffles, cfg.seed)
                c["verdict"] = verdict(c["form"])
                bar.advance()
    summary = {"model": model_id(model), "task": cfg.task, "n_prompts": len(prompts), "accuracy": accuracy,
               **summarize_transform(rows, top, effects, accuracy)}
    atomic_write_json(run.path / "transform.json", {"effects": effects, "layers": rows, "top": top})
    run.write_metrics({**summary, "layers": rows, "top": top, "plots": _transform_plots(rows, top, effects, cfg.task)},
                      report=False)
    return {"run_dir": str(run.path), **summary, "layers": rows, "top": top}


def _readout(row: dict, key: str) -> float | None:
    return None if row.get(key) is None else row[key]["probe"]


def summarize_transform(rows: list[dict], top: list[dict], effects: dict, accuracy: dict) -> dict[str, Any]:
    """The model's accuracy, the strongest component with its interval, the layer where the answer circle is read
    out best, and the verdict there, in words."""
    best = max(rows, key=lambda r: -1.0 if r.get("answer_circle") is None else r["answer_circle"]["probe"])
    lead = top[0]
    lo, hi = accuracy["ci"]
    small = abs(effects["gap"]) < SMALL_GAP
    words = (f"the model answers {accuracy['success']:.0%} [{lo:.0%}, {hi:.0%}] of {accuracy['n']} prompts; moving "
             f"the start by one moves logit[answer] − logit[next answer] by {effects['gap']:.2f}"
             + (" — a small gap, so the patching shares below are ratios of noise-sized numbers" if small else "")
             + f"; {lead['site']} carries the most ({lead['effect']:+.2f} of that gap, 95% CI "
             f"[{lead['lo']:+.2f}, {lead['hi']:+.2f}] over {effects['n_folds']} folds of {effects['n_pairs']} pairs)")
    rotation = [r["layer"] for r in rows if r["verdict"].startswith("rotation")]
    if rotation:
        form = f"the answer is held on its circle at layers {', '.join(map(str, rotation))}; at layer {best['layer']}: "
        form += best["verdict"]
    else:
        a = best.get("answer_circle") or {}
        form = (f"the answer's circle is read out at no layer's last token (best R² {a.get('probe', float('nan')):.2f} "
                f"at layer {best['layer']}, shuffled 95th pct {a.get('probe_p95', float('nan')):.2f}): not computed "
                "as a rotation there — " + best["verdict"].split(": ", 1)[-1])
    return {"top_component": lead["site"], "top_effect": lead["effect"], "top_ci": [lead["lo"], lead["hi"]],
            "gap": effects["gap"], "small_gap": small, "n_pairs": effects["n_pairs"], "rotation_layers": rotation,
            "best_answer_layer": best["layer"], "answer_readout": _readout(best, "answer_circle"),
            "sum_readout": _readout(best, "sum_line"), "start_readout": _readout(best, "start_circle"),
            "verdict": f"{words}. {form}"}


SMALL_GAP = 1.0  # logits: a start one day later that moves the answer's margin by less is too weak to share out


def _transform_plots(rows: list[dict], top: list[dict], effects: dict, task: str) -> list[dict]:
    xs = [r["layer"] for r in rows]
    series = []
    for key, name in (("answer_circle", "answer on its circle"), ("sum_line", "unwrapped sum x + k"),
                      ("start_circle", "start on its circle"), ("offset", "offset k")):
        if all(r.get(key) is not None for r in rows):
            series.append({"name": name, "x": xs, "y": [r[key]["probe"] for r in rows]})
    if rows and rows[0].get("answer_circle") is not None:
        series.append({"name": "answer, shuffled (95th pct)", "x": xs,
                       "y": [r["answer_circle"]["probe_p95"] for r in rows]})
    h = effects["attn_head"]
    return [
        {"type": "line", "title": f"{task}: held-out read-out R² at the last token, per hypothesis", "x_label": "layer",
         "y_label": "read-out R²", "series": series},
        {"type": "heatmap", "title": f"{task}: patching effect of each head (start x → x + 1)", "rows": h["rows"],
         "cols": h["cols"], "signed": True, "values": np.round(np.array(h["mean"]), 4).tolist(), "fmt": ".2f",
         "y_label": "layer", "x_label": "head", "value_label": "effect (share of the clean − corrupted gap restored)"},
        {"type": "bar", "title": f"{task}: top components, mean effect over folds with 95% intervals",
         "x_label": "component", "y_label": "effect", "labels": [c["site"] for c in top],
         "values": [c["effect"] for c in top], "lo": [c["lo"] for c in top], "hi": [c["hi"] for c in top]},
    ]


def run_linebreak(cfg: LineBreakConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Line breaks: the newline log-odds over widths and remainders (does the model compare count with width?),
    patching of every head and MLP between a text whose break is due and the same last line after wider lines,
    and what the top components carry (count, width, remainder) and where their heads look (the newlines)."""
    from ..core.models import model_id
    from ..core.sites import parse_site
    from . import linebreak as lb
    from .transform import last_token_acts, top_components

    with open_job(cfg, "manifold-linebreak", model, tokenizer) as job:
        model, tokenizer, layers = job.model, job.tokenizer, job.layers(cfg.layers)
        nl = lb.newline_id(tokenizer)
        texts = lb.sweep(tokenizer, cfg.widths, cfg.n, cfg.lines, cfg.seed)
        pairs = lb.pairs(tokenizer, cfg.widths, cfg.pairs, cfg.lines, cfg.delta, cfg.seed)
        if len(pairs) < 2 * cfg.folds:
            raise ValueError(f"only {len(pairs)} text pairs of equal token count could be made for widths "
                             f"{cfg.widths} with this tokenizer; --folds {cfg.folds} needs ≥ {2 * cfg.folds}: give "
                             "wider --widths or fewer --folds")
        run = job.run
        run.write_config(cfg)
        lo = lb.logodds(model, tokenizer, texts, cfg.batch_size)
        beh = lb.behaviour(texts, lo)
        flat = [t for p in pairs for t in p]
        plo = lb.logodds(model, tokenizer, flat, cfg.batch_size)
        gaps = plo[0::2] - plo[1::2]
        seqs = [(tokenizer(a.text)["input_ids"], tokenizer(b.text)["input_ids"]) for a, b in pairs]
        effects = lb.last_position_effects(model, seqs, lb.newline_logodds(nl), cfg.folds, cfg.seed,
                                           max(1, cfg.batch_size // 2))
        top = top_components(effects, cfg.top)
        sites = [parse_site(f"resid_post.{L}") for L in layers] + [parse_site(c["site"]) for c in top]
        sweep_seqs = [tokenizer(t.text)["input_ids"] for t in texts]
        acts = last_token_acts(model, tokenizer, sweep_seqs, sites, cfg.batch_size)
        rows = []
        with progress(len(layers) + len(top), "reading out count, width and remainder", unit="site") as bar:
            for L, s in zip(layers, sites):
                rows.append({"layer": L, **lb.carried(acts[s], texts, cfg.n_shuffles, cfg.seed)})
                bar.advance()
            for c, s in zip(top, sites[len(layers):]):
                c["carries"] = lb.carried(acts[s], texts, cfg.n_shuffles, cfg.seed)
                bar.advance()
        heads = [(c["layer"], int(c["site"].split(".")[2])) for c in top if c["site"].startswith("attn_head")]
        att = lb.newline_attention(model, tokenizer, texts, heads, cfg.batch_size)
        for c in top:
            if c["site"].startswith("attn_head"):
                key = c["site"].split(".", 1)[1]
                c["newline_attention"] = att["heads"][key]
                c["layer_mean_attention"] = att["layer_mean"][str(c["layer"])]
    summary = {"model": model_id(model), "widths": list(cfg.widths), **summarize_linebreak(beh, gaps, effects, top)}
    atomic_write_json(run.path / "linebreak.json", {"behaviour": beh, "pair_gaps": gaps.tolist(), "effects": effects,
                                                    "layers": rows, "top": top})
    run.write_metrics({**summary, "behaviour": beh, "layers": rows, "top": top,
                       "plots": _linebreak_plots(beh, rows, top, effects)}, report=False)
    return {"run_dir": str(run.path), **summary, "behaviour": beh, "layers": rows, "top": top}


def summarize_linebreak(beh: dict, gaps: np.ndarray, effects: dict, top: list[dict]) -> dict[str, Any]:
    """Does the model compare, how much the width alone moves the newline, and which components carry it, in words."""
    from scipy import stats

    m = float(gaps.mean())
    h = float(stats.t.ppf(0.975, len(gaps) - 1) * gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else 0.0
    bc, bw = beh["b_count"], beh["b_width"]
    compares = beh["b_count_ci"][0] > 0 and beh["b_width_ci"][1] < 0
    how = ("compares the count with the width" if compares else
           "counts but does not read the width" if beh["b_count_ci"][0] > 0 else "reads neither reliably")
    lead = top[0]
    words = (f"The newline's log-odds rise {bc:+.2f} [{beh['b_count_ci'][0]:+.2f}, {beh['b_count_ci'][1]:+.2f}] per "
             f"character counted and move {bw:+.2f} [{beh['b_width_ci'][0]:+.2f}, {beh['b_width_ci'][1]:+.2f}] per "
             f"character of line width (fit R² {beh['fit_r2']:.2f}; count alone {beh['count_only_r2']:.2f}): the "
             f"model {how}. A break that is due (≤ 1 character left) against ≥ 10 left: AUROC "
             f"{beh['auroc_due']:.2f}. The same last line after lines wider by the pair's delta: log-odds lower by "
             f"{m:.2f} [{m - h:.2f}, {m + h:.2f}] ({len(gaps)} pairs). {lead['site']} carries the most of that gap "
             f"({lead['effect']:+.2f} [{lead['lo']:+.2f}, {lead['hi']:+.2f}] over {effects['n_folds']} folds)")
    return {"compares": compares, "b_count": bc, "b_width": bw, "auroc_due": beh["auroc_due"], "width_gap": m,
            "width_gap_ci": [m - h, m + h], "n_pairs": int(len(gaps)), "top_component": lead["site"],
            "top_effect": lead["effect"], "top_ci": [lead["lo"], lead["hi"]], "verdict": words}


def _linebreak_plots(beh: dict, rows: list[dict], top: list[dict], effects: dict) -> list[dict]:
    per = beh["mean_by_remaining"]
    xs = [r["layer"] for r in rows]
    series = [{"name": name, "x": xs, "y": [r[key]["probe"] for r in rows]}
              for key, name in (("count", "count (chars since the line start)"), ("width", "line width"),
                                ("remaining", "remainder width − count"))]
    series.append({"name": "remainder, shuffled (95th pct)", "x": xs, "y": [r["remaining"]["probe_p95"] for r in rows]})
    h = effects["attn_head"]
    return [
        {"type": "line", "title": "newline log-odds by characters left on the line (mean over texts)",
         "x_label": "characters left (width − count)", "y_label": "log-odds of a newline",
         "series": [{"name": "model", "x": [int(k) for k in per], "y": list(per.values())}]},
        {"type": "line", "title": "held-out read-out R² at the last token, per layer", "x_label": "layer",
         "y_label": "read-out R²", "series": series},
        {"type": "heatmap", "title": "patching effect of each head at the last token (break due → wider lines)", "rows": h["rows"],
         "cols": h["cols"], "signed": True, "values": np.round(np.array(h["mean"]), 4).tolist(), "fmt": ".2f",
         "y_label": "layer", "x_label": "head", "value_label": "effect (share of the newline log-odds gap restored)"},
        {"type": "bar", "title": "top components, mean effect over folds with 95% intervals", "x_label": "component",
         "y_label": "effect", "labels": [c["site"] for c in top], "values": [c["effect"] for c in top],
         "lo": [c["lo"] for c in top], "hi": [c["hi"] for c in top]},
    ]
