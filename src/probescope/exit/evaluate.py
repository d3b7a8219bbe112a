"""`probescope exit eval`: every method on the same held-out test problems, τ calibrated on the val split.

Methods: "probe" (ours, `generate_with_exit` live), "full" (full reasoning, live), "forced_answer" (DEER-style:
exit when the forced answer's top letter probability >= τ_f at a newline), "budget" (a fixed token budget cut
at the probe's mean kept length), "oracle" (exit at the settle point: the earliest cut after which the forced
answer never changes), and with `--correctness-probe` "correctness_probe" (Zhang et al. 2025: a 2-layer MLP on the
state at each check predicts whether the forced answer there is correct; exit when P >= τ_c, answer the forced
answer; `probescope.exit.correctness`). Offline figures come from the collected test data; live ones from two timed
runs.
"""

from __future__ import annotations

from ..core.stats import wilson as _wilson

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .answer import LETTERS
from ..probes.base import load_probe
from ..core.options import RunOptions, option
from ..report.job import open_job
from ..tasks import mcq
from .calibrate import ExitRuleOptions, Outcome, Trace, calibrate, simulate
from .collect import Collected, check_probe_fits, is_free, load_collected, row_checks, row_group
from .free import STABILITY_CLASSES, settle_confidence
from .formats import ReasoningFormat, get_format
from .generate import ExitPolicy, generate_with_exit
from .prompts import make_prompts
from .train import checkpoint_probs

PARETO_TAUS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999]


@dataclass
class EvalConfig(ExitRuleOptions, RunOptions):
    """Every method on the test split at the τ calibrated on val: Pareto curves, table, report page.

    The agreement target and calibration rule, the probe policy, the live runs."""

    DEFAULTS = {"threads": 1}  # 1 is fastest on a busy few-core machine
    collect: str = option("runs/exit-collect", "an `exit collect` run folder")
    probe: str = option("runs/exit-probe", "an `exit train` run folder or probe file")
    out: str = option("runs/exit-eval", "run folder: metrics.json (methods, Pareto), report.html")
    live: bool = option(True, "time live runs (full vs early exit)", flag="--live/--no-live")
    n_live: int = option(0, "live runs on the first N test problems (0: all of them)", min=0)
    batch_size: int = option(16, "problems decoded together in the live runs", min=1)
    max_new_tokens: int = option(160, "reasoning token budget of the live runs", min=1)
    correctness_probe: bool = option(
        False, "add the method correctness_probe (Zhang et al. 2025): a 2-layer MLP on the state at each check, trained "
               "on the train problems' checks to predict whether the forced answer there is correct; exit when its "
               "P >= τ calibrated on val like the others (offline replay)",
        flag="--correctness-probe/--no-correctness-probe")
    correctness_label: str = option("gold", "what the correctness probe predicts at a check: gold (the forced answer "
                                            "is correct, the paper's target) | final (it is already the full "
                                            "reasoning's answer)", choices=("gold", "final"))
    correctness_layers: list[int] = option(list, "candidate layers of the correctness probe, the lowest val log-loss "
                                                 "kept (default: every collected one)")
    correctness_hidden: int = option(64, "hidden width of the correctness probe's MLP", min=1)
    quiet: bool | None = option(None, cli=False)


def curve_answers(row: dict) -> dict[int, str]:
    """The forced answer at each curve cut: the top letter, or the decoded free-form answer."""
    if "curve_answers" in row:
        return dict(zip(row["curve_cuts"], row["curve_answers"]))
    return {c: LETTERS[int(np.argmax(p))] for c, p in zip(row["curve_cuts"], row["curve_probs"])}


def probe_traces(col: Collected, idx: list[int], probe: Any, mode: str = "forced") -> list[Trace]:
    """Checkpoints with the probe's confidence; the answer is the forced answer at the cut (or the probe's).
    Free-form answers: the confidence is the stability probe's P(stable), the answer always the forced one."""
    free = is_free(col)
    mode = "forced" if free else mode
    out = []
    for i, P in zip(idx, checkpoint_probs(col, probe, idx)):
        r = col.rows[i]
        cps = row_checks(col, r)
        cur = curve_answers(r)
        cuts = np.array([c for c, _ in cps], dtype=int)
        if mode == "probe":
            ans = [LETTERS[int(k)] for k in P.argmax(-1).tolist()] if len(P) else []
        else:
            ans = [cur[int(c)] for c in cuts]
        if not len(P):
            conf = np.zeros(0)
        elif free:
            conf = P[:, STABILITY_CLASSES.index("stable")].numpy().astype(float)
        else:
            conf = P.max(-1).values.numpy().astype(float)
        out.append(Trace(r["id"], r["split"], r["gold"], r["final"], r["cut"], cuts, conf, ans, row_group(r)))
    return out


def forced_traces(col: Collected, idx: list[int]) -> list[Trace]:
    """Checkpoints (the same boundaries) with the forced answer's top probability as the confidence (DEER-style);
    free-form answers: the settle rule (`free.settle_confidence`: the same forced answer for m checks in a row)."""
    out = []
    for i in idx:
        r = col.rows[i]
        cur = curve_answers(r)
        cuts = np.array([c for c, _ in row_checks(col, r)], dtype=int)
        ans = [cur[int(c)] for c in cuts]
        if "curve_answers" in r:
            conf = settle_confidence(ans)
        else:
            probs = dict(zip(r["curve_cuts"], r["curve_probs"]))
            conf = np.array([max(probs[c]) for c in cuts], dtype=float)
        out.append(Trace(r["id"], r["split"], r["gold"], r["final"], r["cut"], cuts, conf, ans, row_group(r)))
    return out


def full_outcome(col: Collected, idx: list[int]) -> Outcome:
    rows = [col.rows[i] for i in idx]
    L = np.array([r["cut"] for r in rows])
    return Outcome(L.copy(), L, [r["final"] for r in rows], [r["final"] for r in rows], [r["gold"] for r in rows])


def settle_cut(row: dict) -> int:
    """The earliest curve cut after which the forced answer always equals the full-reasoning answer."""
    cuts = row["curve_cuts"]
    cur = curve_answers(row)
    letters = [cur[c] for c in cuts]
    k = len(cuts)
    while k > 0 and letters[k - 1] == row["final"]:
        k -= 1
    return cuts[k] if k < len(cuts) else row["cut"]


def oracle_outcome(col: Collected, idx: list[int]) -> Outcome:
    rows = [col.rows[i] for i in idx]
    return Outcome(np.array([settle_cut(r) for r in rows]), np.array([r["cut"] for r in rows]),
                   [r["final"] for r in rows], [r["final"] for r in rows], [r["gold"] for r in rows])


def budget_outcome(col: Collected, idx: list[int], budget: int) -> Outcome:
    """Cut every reasoning after `budget` tokens (a curve cut: multiples of the collect stride)."""
    cuts, answers = [], []
    for i in idx:
        r = col.rows[i]
        cur = curve_answers(r)
        c = min(budget, r["cut"])
        c = max(k for k in cur if k <= c)
        cuts.append(c)
        answers.append(cur[c])
    rows = [col.rows[i] for i in idx]
    return Outcome(np.array(cuts), np.array([r["cut"] for r in rows]), answers, [r["final"] for r in rows],
                   [r["gold"] for r in rows])


def matched_budget(col: Collected, idx: list[int], mean_cut: float) -> int:
    """The budget (a multiple of the stride) whose mean kept length is closest to `mean_cut`."""
    stride = int(col.meta.get("config", {}).get("stride", 4))
    top = max((col.rows[i]["cut"] for i in idx), default=0)
    cands = list(range(0, top + stride, stride))
    return min(cands, key=lambda b: abs(budget_outcome(col, idx, b).cuts.mean() - mean_cut))


def wilson(k: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion, rounded for the tables."""
    return [round(x, 4) for x in _wilson(k, n, z)]


def method_summary(out: Outcome, full: Outcome, oracle_saved: float, wallclock_saved: float | None,
                   probe_overhead: float | None, **extra: Any) -> dict[str, Any]:
    """The per-method object of the benchmark JSON."""
    return {
        "tokens_saved": round(out.tokens_saved, 4), "wallclock_saved": None if wallclock_saved is None else round(wallclock_saved, 4),
        "agreement": round(out.agreement, 4), "agreement_full": 1.0,
        "agreement_ci95": wilson(out.agreement * out.n, out.n), "accuracy": round(out.accuracy, 4),
        "accuracy_ci95": wilson(out.accuracy * out.n, out.n), "accuracy_full": round(full.accuracy, 4),
        "accuracy_full_ci95": wilson(full.accuracy * full.n, full.n), **accuracy_flips(out), "n": out.n,
        "probe_overhead": None if probe_overhead is None else round(probe_overhead, 4),
        "oracle_fraction": round(out.tokens_saved / oracle_saved, 4) if oracle_saved > 0 else None, **extra,
    }


def accuracy_flips(out: Outcome) -> dict[str, int]:
    """Paired against full reasoning on the same problems: exits answering right where full reasoning is wrong
    (`gained`) and wrong where it is right (`lost`); accuracy − full accuracy = (gained − lost) / n."""
    ok = [a == g for a, g in zip(out.answers, out.golds)]
    ok_full = [f == g for f, g in zip(out.finals, out.golds)]
    return {"gained": int(sum(o and not f for o, f in zip(ok, ok_full))),
            "lost": int(sum(f and not o for o, f in zip(ok, ok_full)))}


def live_runs(model: Any, tok: Any, prompts: Sequence[str], golds: Sequence[str], probe: Any, policy: ExitPolicy, *,
              cfg: EvalConfig, quiet: bool | None, fmt: ReasoningFormat | None = None) -> dict[str, Any]:
    """Timed live runs on the same prompts: full reasoning (no probe, no hooks) and early exit (probe)."""
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, quiet=quiet, fmt=fmt)
    full = generate_with_exit(model, tok, prompts, None, ExitPolicy(kind="never", answers=policy.answers), **kw)
    ours = generate_with_exit(model, tok, prompts, probe, policy, allow_other_model=cfg.allow_other_model, **kw)
    fo = Outcome(np.array([r.cut for r in full.rows]), np.array([r.cut for r in full.rows]),
                 [r.answer for r in full.rows], [r.answer for r in full.rows], list(golds))
    oo = Outcome(np.array([r.cut for r in ours.rows]), fo.full, [r.answer for r in ours.rows], fo.answers, list(golds))
    return {"full": full, "ours": ours, "full_outcome": fo, "ours_outcome": oo,
            "wallclock_saved": 1 - ours.seconds / full.seconds, "probe_overhead": ours.probe_overhead}


def collected_prompts(col: Collected, idx: list[int], tok: Any) -> list[str]:
    """The prompts of collected problems: stored in the rows (any collect since `--data`), else the generated
    problems rebuilt from the collect's seed."""
    rows = [col.rows[i] for i in idx]
    if all("prompt" in r for r in rows):
        return [r["prompt"] for r in rows]
    problems = {p.id: p for s in sorted({r["split"] for r in rows})
                for p in mcq.generate(s, len(col.split(s)), seed=col.meta["config"]["seed"])}
    return make_prompts([problems[r["id"]] for r in rows], tok, int(col.meta["config"].get("shots", 1)))


def pareto(col: Collected, idx: list[int], probe_tr: list[Trace], forced_tr: list[Trace], cfg: EvalConfig,
           extra: dict[str, list[Trace]] | None = None) -> dict:
    """Tokens saved vs agreement and accuracy for every τ (probe, forced answer, and the threshold signals of
    `extra`, e.g. the correctness probe) and every budget."""
    def pts(outs: list[Outcome]) -> dict[str, list[float]]:
        return {"tokens_saved": [round(o.tokens_saved, 4) for o in outs], "agreement": [round(o.agreement, 4) for o in outs],
                "accuracy": [round(o.accuracy, 4) for o in outs]}

    stride = int(col.meta.get("config", {}).get("stride", 4))
    top = max((col.rows[i]["cut"] for i in idx), default=0)
    budgets = list(range(0, top + stride, stride))
    return {
        "taus": PARETO_TAUS,
        "probe": pts([simulate(probe_tr, t, cfg.consecutive, cfg.min_tokens) for t in PARETO_TAUS]),
        "forced_answer": pts([simulate(forced_tr, t, cfg.consecutive, cfg.min_tokens) for t in PARETO_TAUS]),
        "budgets": budgets,
        "budget": pts([budget_outcome(col, idx, b) for b in budgets]),
        "oracle": pts([oracle_outcome(col, idx)]),
        **{name: pts([simulate(trs, t, cfg.consecutive, cfg.min_tokens) for t in PARETO_TAUS])
           for name, trs in (extra or {}).items()},
    }


def pareto_plots(p: dict, model: str) -> list[dict]:
    specs = []
    for metric in ("agreement", "accuracy"):
        series = [{"name": name.replace("_", " "), "x": p[name]["tokens_saved"], "y": p[name][metric]}
                  for name in ("probe", "forced_answer", "correctness_probe", "budget", "oracle") if name in p]
        specs.append({"type": "line", "title": f"{model}: tokens saved vs {metric} (test split)",
                      "x_label": "share of reasoning tokens saved", "y_label": metric, "series": series,
                      "caption": "one point per τ (probe, forced answer) or per token budget; the oracle exits "
                                 "at the settle point"})
    return specs


def trace_plot(row: Any, tok: Any, tau: float, settle: int | None, title: str,
               classes: Sequence[str] = LETTERS) -> dict:
    """The probe's belief per option (or per class: "changes"/"stable") along one live reasoning, the exit point
    marked."""
    P = row.probe_trace
    x = list(range(1, len(P) + 1))
    vl = [{"x": row.cut + (1 if row.stop == "exit" else 0), "label": f"exit ({row.stop})"}]
    if settle is not None:
        vl.append({"x": settle, "label": "settle"})
    return {"type": "line", "title": title, "x_label": "reasoning tokens", "y_label": "probe P(option)",
            "series": [{"name": f"({L})" if L in LETTERS else str(L), "x": x, "y": [round(float(v), 4) for v in P[:, k]]}
                       for k, L in enumerate(classes)],
            "vlines": vl, "y_range": [0, 1],
            "caption": f"τ = {tau:.4g}; text: {tok.decode(row.fed_ids)[:300]!r}"}


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None, *, quiet: bool | None = None) -> dict[str, Any]:
    """Evaluate every method on the collect run's test split with `cfg.threads` torch threads; write metrics and
    plots to `cfg.out` and return them. `model`, `tokenizer`: a loaded model for the live runs (default: the
    collect's model, loaded when the live runs start)."""
    quiet = cfg.quiet if quiet is None else quiet
    check_correctness_options(cfg)  # before the job opens its folder: nothing is written for a bad layer
    with open_job(cfg, "exit", model, tokenizer) as job:
        return _evaluate(cfg, quiet, job)


def check_correctness_options(cfg: EvalConfig) -> None:
    """With `--correctness-probe`, raise a clear error for a candidate layer the collect did not record (read from
    its collect.json; a missing collect is reported when it loads)."""
    from pathlib import Path

    from ..core.io import read_json
    from .correctness import check_layers

    path = Path(cfg.collect) / "collect.json"
    if cfg.correctness_probe and cfg.correctness_layers and path.exists():
        check_layers(cfg.correctness_layers, read_json(path).get("layers", []))


def _evaluate(cfg: EvalConfig, quiet: bool | None, job: Any) -> dict[str, Any]:
    col = load_collected(cfg.collect)
    job.name = col.meta["model"]  # the live runs' model, loaded when they start (unless one was given)
    probe = load_probe(cfg.probe)
    check_probe_fits(col, probe, allow_other_model=cfg.allow_other_model)
    val, test = col.split("val"), col.split("test")
    if not val or not test:
        raise ValueError(f"the collect run {cfg.collect} needs val and test problems (val {len(val)}, test {len(test)})")
    ptr_val, ftr_val = probe_traces(col, val, probe, cfg.mode), forced_traces(col, val)
    cal_p = calibrate(ptr_val, cfg.target_agreement, cfg.rule, cfg.delta, cfg.consecutive, cfg.min_tokens)
    cal_f = calibrate(ftr_val, cfg.target_agreement, cfg.rule, cfg.delta, cfg.consecutive, cfg.min_tokens)
    ptr, ftr = probe_traces(col, test, probe, cfg.mode), forced_traces(col, test)
    corr = correctness_method(col, cfg) if cfg.correctness_probe else None
    full = full_outcome(col, test)
    ours = simulate(ptr, cal_p.tau, cfg.consecutive, cfg.min_tokens)
    forced = simulate(ftr, cal_f.tau, cfg.consecutive, cfg.min_tokens)
    oracle = oracle_outcome(col, test)
    budget_tokens = matched_budget(col, test, ours.cuts.mean())
    budget = budget_outcome(col, test, budget_tokens)
    metrics: dict[str, Any] = {"model": col.meta["model"], "n_val": len(val), "n_test": len(test),
                               "calibration": {"probe": cal_p.to_dict(), "forced_answer": cal_f.to_dict()},
                               "probe_layer": probe.layer, "budget_tokens": budget_tokens}
    if corr is not None:
        metrics["calibration"]["correctness_probe"] = corr["calibration"].to_dict()
        metrics["correctness_probe"] = corr["info"]
    live = None
    model = tok = None
    if cfg.live:
        model, tok = job.model, job.tokenizer
        live_idx = test[: cfg.n_live] if cfg.n_live else test
        fmt = get_format(col.meta.get("format"))
        pol = ExitPolicy(kind="probe", tau=cal_p.tau, consecutive=cfg.consecutive, min_tokens=cfg.min_tokens,
                         mode="forced" if is_free(col) else cfg.mode, boundary=fmt.boundary, every=fmt.every,
                         stable_class=STABILITY_CLASSES.index("stable") if is_free(col) else None,
                         answers="free" if is_free(col) else "mcq",  # τ = ∞ (none certified): never exits
                         conf_range=cal_p.confidence_range)  # the drift check: test problems unlike the val ones
        live = live_runs(model, tok, collected_prompts(col, live_idx, tok), [col.rows[i]["gold"] for i in live_idx],
                         probe, pol, cfg=cfg, quiet=quiet, fmt=fmt)
        metrics["live"] = {
            "n": len(live_idx), "full_seconds": round(live["full"].seconds, 3), "exit_seconds": round(live["ours"].seconds, 3),
            "probe_seconds": round(live["ours"].probe_seconds, 4), "wallclock_saved": round(live["wallclock_saved"], 4),
            "tokens_saved": round(live["ours_outcome"].tokens_saved, 4), "agreement": round(live["ours_outcome"].agreement, 4),
            "accuracy": round(live["ours_outcome"].accuracy, 4), "probe_overhead": round(live["probe_overhead"], 4),
            "matches_offline": round(float(np.mean([r.cut == c and r.answer == a for r, c, a in
                                                    zip(live["ours"].rows, ours.cuts, ours.answers)])), 4),
            "drift": live["ours"].drift,
        }
    o_saved = oracle.tokens_saved
    # token, agreement and accuracy figures come from the live runs when they covered every test problem (they
    # match the offline simulation); with --n-live < n_test, from the offline simulation on all of them
    all_live = bool(live) and metrics["live"]["n"] == len(test)
    ratio = (live["wallclock_saved"] / live["ours_outcome"].tokens_saved
             if live and live["ours_outcome"].tokens_saved > 0 else None)
    est = (lambda s: None if ratio is None else s * ratio)
    checks_share = sum(int((t.cuts <= c).sum()) for t, c in zip(ftr, forced.cuts)) / max(1, full.full.sum())
    methods = {
        "probe": method_summary(live["ours_outcome"] if all_live else ours, full, o_saved,
                                live["wallclock_saved"] if live else None, live["probe_overhead"] if live else None,
                                tau=cal_p.to_dict()["tau"], offline_tokens_saved=round(ours.tokens_saved, 4),
                                offline_agreement=round(ours.agreement, 4), live=bool(live)),
        "forced_answer": method_summary(forced, full, o_saved, None if ratio is None else (forced.tokens_saved - checks_share) * ratio,
                                        None, tau=cal_f.to_dict()["tau"], wallclock_estimated=True),
        **({} if corr is None else {"correctness_probe": method_summary(
            corr["outcome"], full, o_saved, est(corr["outcome"].tokens_saved), None,
            tau=corr["calibration"].to_dict()["tau"], layer=corr["info"]["layer"], label=corr["info"]["label"],
            wallclock_estimated=True)}),
        "budget": method_summary(budget, full, o_saved, est(budget.tokens_saved), None, budget_tokens=budget_tokens,
                                 wallclock_estimated=True),
        "oracle": method_summary(oracle, full, o_saved, est(oracle.tokens_saved), None, wallclock_estimated=True),
        "full": method_summary(live["full_outcome"] if all_live else full, full, o_saved, 0.0, None),
    }
    metrics["methods"] = methods
    metrics["model_accuracy"] = round(full.accuracy, 4)
    extra = {} if corr is None else {"correctness_probe": (corr["traces"], corr["calibration"].tau)}
    groups = by_group(col, test, ptr, ftr, (cal_p.tau, cal_f.tau), cfg, extra=extra)
    if len(groups) > 1:  # a test split of several family groups (exit collect --n-test-held-out): each one's figures
        metrics["by_group"] = groups
    par = pareto(col, test, ptr, ftr, cfg, extra={k: v[0] for k, v in extra.items()})
    metrics["pareto"] = par
    plots = pareto_plots(par, col.meta["model"])
    if live:
        rows = live["ours"].rows
        pick = next((k for k, r in enumerate(rows) if r.stop == "exit"), 0)
        if rows and rows[pick].probe_trace is not None:
            plots.append(trace_plot(rows[pick], tok, cal_p.tau, settle_cut(col.rows[test[pick]]),
                                    f"probe belief along one test reasoning ({col.rows[test[pick]]['id']})",
                                    [str(c) for c in probe.classes]))
    plots.append(table_spec(methods, col.meta["model"]))
    metrics["plots"] = plots
    run = job.run
    run.write_config(asdict(cfg))
    run.write_metrics(metrics)
    return metrics


def correctness_method(col: Collected, cfg: EvalConfig) -> dict[str, Any]:
    """The correctness probe (`probescope.exit.correctness`): fitted on the train problems' checks (layer by val
    log-loss), τ calibrated on val by `cfg`'s rule, replayed on the test problems: its calibration, test traces and
    outcome, and what was fitted (`info`)."""
    from .correctness import choose_correctness_probe, correctness_traces

    cprobe, scores = choose_correctness_probe(col, cfg.correctness_layers, cfg.correctness_label,
                                              cfg.correctness_hidden, cfg.seed)
    cal = calibrate(correctness_traces(col, col.split("val"), cprobe), cfg.target_agreement, cfg.rule, cfg.delta,
                    cfg.consecutive, cfg.min_tokens)
    trs = correctness_traces(col, col.split("test"), cprobe)
    return {"calibration": cal, "traces": trs, "outcome": simulate(trs, cal.tau, cfg.consecutive, cfg.min_tokens),
            "info": {"layer": cprobe.layer, "label": cfg.correctness_label, "hidden": cfg.correctness_hidden,
                     "val_log_loss": scores, "kind": "mlp"}}


def by_group(col: Collected, test: list[int], ptr: list[Trace], ftr: list[Trace], taus: tuple[float, float],
             cfg: EvalConfig, extra: dict[str, tuple[list[Trace], float]] | None = None) -> dict[str, dict]:
    """Offline figures per family group of the test split (original / held-out / file): the model's accuracy, and
    the probe and the forced answer at their τ calibrated on val (tokens saved, agreement with its 95% interval,
    accuracy with its interval), the oracle's tokens saved; `extra`: more threshold signals (name: test traces,
    τ), e.g. the correctness probe."""
    from .calibrate import GROUP_ORDER

    names = [t.group for t in ptr]
    out = {}
    for g in sorted(set(names), key=lambda x: GROUP_ORDER.index(x) if x in GROUP_ORDER else len(GROUP_ORDER)):
        pos = [k for k, x in enumerate(names) if x == g]
        idx = [test[k] for k in pos]
        full = full_outcome(col, idx)
        row: dict[str, Any] = {"n": len(idx), "model_accuracy": round(full.accuracy, 4),
                               "oracle_tokens_saved": round(oracle_outcome(col, idx).tokens_saved, 4)}
        signals = [("probe", ptr, taus[0]), ("forced_answer", ftr, taus[1])]
        signals += [(name, trs, tau) for name, (trs, tau) in (extra or {}).items()]
        for name, trs, tau in signals:
            o = simulate([trs[k] for k in pos], tau, cfg.consecutive, cfg.min_tokens)
            row[name] = {"tokens_saved": round(o.tokens_saved, 4), "agreement": round(o.agreement, 4),
                         "agreement_ci95": wilson(o.agreement * o.n, o.n), "accuracy": round(o.accuracy, 4),
                         "accuracy_ci95": wilson(o.accuracy * o.n, o.n), **accuracy_flips(o)}
        out[g] = row
    return out


def table_spec(methods: dict[str, dict], model: str) -> dict:
    cols = ["method", "tokens saved", "wall-clock saved", "agreement", "agreement 95% CI", "accuracy", "probe overhead",
            "oracle fraction", "n"]
    rows = []
    for name, m in methods.items():
        rows.append([name, m["tokens_saved"], "" if m["wallclock_saved"] is None else
                     f"{m['wallclock_saved']:.3f}{' (est.)' if m.get('wallclock_estimated') else ''}",
                     m["agreement"], f"[{m['agreement_ci95'][0]}, {m['agreement_ci95'][1]}]", m["accuracy"],
                     "" if m["probe_overhead"] is None else m["probe_overhead"],
                     "" if m["oracle_fraction"] is None else m["oracle_fraction"], m["n"]])
    return {"type": "table", "title": f"{model}: early exit at the calibrated τ (test split)", "columns": cols, "rows": rows}
