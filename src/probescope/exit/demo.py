"""The early-exit demo: the reasoner with its shipped probe on a handful of test problems, live, vs full reasoning.

Prints the table (tokens and wall-clock saved, agreement, accuracy, probe overhead) and writes a report page with
the headline numbers; every problem's reasoning as text (what the exit kept, what it skipped, the exit point and
the answers) next to the probe's belief per option along the full reasoning, one problem at a time (tabs); and
the Pareto curve of this run (a dense probe τ sweep and fixed token budgets, replayed on the same problems).
"""

from __future__ import annotations

import math
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from typing import Any, Sequence

from .answer import LETTERS
from ..probes.base import load_probe, torch_threads
from ..report.runs import RunDir
from ..tasks import mcq
from .calibrate import load_calibration
from .live import shipped_probe
from .evaluate import trace_plot
from .generate import ExitPolicy, generate_with_exit
from .prompts import make_prompts

MODEL = "smollm2-135m-reasoner-v2"  # the one shipped reasoner (#33 item 2): generalises to held-out families
REASONERS = (MODEL, "smollm2-135m-reasoner")  # the older stages 1+2 reasoner stays loadable by name


def shipped_available(model: str = MODEL) -> bool:
    """Whether `model` has a shipped letter probe and all of its adapter stages are installed."""
    from ..core.models.reasoner import NAME_V2, stage_dirs

    if not shipped_probe(model).exists():
        return False
    if model in REASONERS:
        return all((d / "adapter_model.safetensors").exists() for d in stage_dirs(v2=model == NAME_V2))
    return True


def demo_problems(n: int, seed: int = 1) -> list:
    """The demo's test problems: the first half of the original families, the rest of the held-out ones
    (phrasings and a kind the reasoner never trained on), alternating; none used for training or calibration."""
    orig = mcq.generate("test", n - n // 2, seed=seed)
    held = mcq.generate("test", n // 2, seed=seed, held_out=True)
    out = []
    for i in range(max(len(orig), len(held))):
        out += orig[i: i + 1] + held[i: i + 1]
    return out


def run_exit_demo(model: str = MODEL, out: str = "runs/demo", quiet: bool = False, n: int = 8,
                  max_new_tokens: int = 160) -> dict:
    """Early exit vs full reasoning, live, on `n` test problems; report page in `out`."""
    console = Console(quiet=quiet)
    path = shipped_probe(model)
    probe = load_probe(path)
    cal = load_calibration(path, probe, "mcq")  # missing, or made for another probe: an error naming the fix
    tau, mode = cal["tau"], cal.get("mode", "probe")
    from ..core.models.registry import load_model

    t0 = time.perf_counter()
    mdl, tok = load_model(model)
    load_s = time.perf_counter() - t0
    problems = demo_problems(n)
    prompts = make_prompts(problems, tok)
    with torch_threads(1):
        full = generate_with_exit(mdl, tok, prompts, probe, ExitPolicy(kind="never"), max_new_tokens=max_new_tokens,
                                  batch_size=n, quiet=quiet)
        pol = ExitPolicy(kind="probe", tau=tau, mode=mode)  # τ = ∞ (no τ certified) never exits
        ours = generate_with_exit(mdl, tok, prompts, probe, pol, max_new_tokens=max_new_tokens, batch_size=n, quiet=quiet)
    L = np.array([r.cut for r in full.rows])
    C = np.array([r.cut for r in ours.rows])
    agree = float(np.mean([a.answer == b.answer for a, b in zip(ours.rows, full.rows)]))
    acc = float(np.mean([r.answer == p.letter for r, p in zip(ours.rows, problems)]))
    acc_full = float(np.mean([r.answer == p.letter for r, p in zip(full.rows, problems)]))
    m = {"model": model, "tau": None if math.isinf(tau) else tau, "mode": mode, "n": n, "probe_layer": probe.layer, "load_s": load_s,
         "tokens_saved": float(1 - C.sum() / max(1, L.sum())), "wallclock_saved": 1 - ours.seconds / full.seconds,
         "agreement": agree, "accuracy": acc, "accuracy_full": acc_full, "probe_overhead": ours.probe_overhead,
         "full_seconds": full.seconds, "exit_seconds": ours.seconds}
    n_held = sum(p.held_out for p in problems)
    m["n_held_out"] = n_held
    table = Table(title=f"{model}: early exit (τ = {tau:.4g}, layer {probe.layer}) vs full reasoning, {n} test problems "
                        f"({n - n_held} original-family, {n_held} held-out-family)")
    for c in ("tokens saved", "wall-clock saved", "agreement", "accuracy (full)", "probe overhead"):
        table.add_column(c)
    table.add_row(f"{m['tokens_saved']:.1%}", f"{m['wallclock_saved']:.1%}", f"{agree:.2f}", f"{acc:.2f} ({acc_full:.2f})",
                  f"{m['probe_overhead']:.2%}")
    console.print(table)
    m["plots"] = page_specs(problems, full.rows, ours.rows, tok, m)
    run = RunDir(out, kind="exit-demo")
    run.write_config({"model": model, "probe": str(path), "n": n, "max_new_tokens": max_new_tokens})
    run.write_metrics(m)  # also renders report.html
    console.print(f"report: {run.path / 'report.html'}")
    return m


def reasoning_item(i: int, problem: Any, full: Any, ours: Any, tok: Any, tau: float, mode: str, layer: int) -> dict:
    """One problem for the report's "reasoning" block: the question, the text the exit kept, the exit point, the
    full reasoning it skipped (greyed), the answers; the probe's belief along the full reasoning next to it."""
    exited = ours.stop == "exit"
    kept_ids = list(ours.fed_ids) if exited else list(ours.reasoning_ids)  # an exit feeds its newline, then stops
    same = list(full.fed_ids[: len(kept_ids)]) == kept_ids
    question = problem.question + "".join(f"\n({L}) {o}" for L, o in zip(LETTERS, problem.options))
    segs = [{"text": question, "kind": "prompt"}, {"text": tok.decode(kept_ids), "kind": "kept"}]
    signal = "probe" if mode == "probe" else "forced answer"
    if exited:
        conf = max(ours.answer_probs) if ours.answer_probs else float("nan")
        segs.append({"text": f"exit here · {signal} P({ours.answer}) = {conf:.3f} ≥ τ {tau:.4g}", "kind": "marker",
                     "note": f"the policy fired at the newline after {ours.cut} reasoning tokens"})
        rest = full.reasoning_ids[len(kept_ids):] if same else full.reasoning_ids
        if not same:
            segs.append({"text": "(the full run's text differs from here; all of it:)\n", "kind": "marker"})
        if rest:
            segs.append({"text": tok.decode(rest).rstrip("\n") + "\n", "kind": "skipped",
                         "note": "the full reasoning went on with this; the exit did not generate it"})
    else:
        segs.append({"text": f"no early exit: reasoning ended ({ours.stop})", "kind": "marker"})
    ok = "✓" if ours.answer == problem.letter else "✗"
    same_ans = "=" if ours.answer == full.answer else "≠"
    segs.append({"text": f"answer at the exit ({ours.answer}) {same_ans} full reasoning's ({full.answer}) · "
                         f"correct ({problem.letter}) {ok}", "kind": "answer"})
    saved = 1 - ours.cut / max(1, full.cut)
    plot = trace_plot(full, tok, tau, None, f"probe belief along the full reasoning ({problem.id})")
    plot.pop("caption", None)  # the text is on the left, with its real line breaks
    plot["vlines"] = [{"x": len(kept_ids), "label": "exit" if exited else f"end ({ours.stop})"}]
    if math.isfinite(tau):
        plot["hlines"] = [{"y": tau, "label": f"τ = {tau:.4g}"}]
    return {"title": f"Problem {i + 1} ({problem.id})", "tab": f"{i + 1} {ok}",
            "subtitle": f"the exit kept {ours.cut} of the full reasoning's {full.cut} tokens "
                        f"({saved:.0%} skipped) · stopped: {ours.stop}",
            "segments": segs, "plot": plot,
            "plot_caption": f"the probe's P(option) after each token of the full reasoning (layer {layer}); "
                            "dashed red: where the exit stopped; dotted: τ"}


def pareto_spec(model: str, problems: Sequence[Any], full_rows: Sequence[Any], tok: Any, live: tuple[float, float],
                n_tau: int = 20, n_budget: int = 12) -> dict:
    """Tokens saved vs agreement with full reasoning on these problems: a dense τ sweep of the probe's own answer
    replayed at each newline of the full runs (τ at quantiles of the confidences seen, so every step shows),
    fixed token budgets (the probe's answer after b tokens), and the live exit."""
    from dataclasses import replace

    from .collect import live_trace

    sweep = ExitPolicy(kind="probe", tau=math.inf, mode="probe")  # the probe's own answer at each newline check
    traces = [replace(live_trace(r, sweep, tok), id=p.id, split="test", gold=p.letter)
              for r, p in zip(full_rows, problems)]
    confs = np.unique(np.concatenate([t.conf for t in traces] + [np.zeros(0)]))
    grid = np.unique(np.round(np.quantile(confs, np.linspace(0, 1, n_tau)), 6)) if len(confs) else np.zeros(0)
    taus = [float(t) for t in grid] + [math.inf]
    pts = []
    for t in taus:
        o = sweep.with_tau(t).replay_all(traces)
        pts.append((float(o.tokens_saved), float(o.agreement),
                    f"τ = {t:.4g}" if math.isfinite(t) else "τ = ∞ (never exits)"))
    pts.sort(key=lambda q: (q[0], -q[1]))
    L = np.array([r.cut for r in full_rows], dtype=float)
    bud = []
    for b in np.unique(np.linspace(0, L.max(), n_budget).round().astype(int)):
        kept, agree = [], []
        for r in full_rows:
            if b >= r.cut or r.probe_trace is None or b == 0:
                kept.append(min(b, r.cut))
                agree.append(b >= r.cut)
            else:
                kept.append(b)
                agree.append(LETTERS[int(r.probe_trace[b - 1].argmax())] == r.answer)
        bud.append((float(1 - sum(kept) / max(1.0, L.sum())), float(np.mean(agree)), f"budget {b} tokens"))
    bud.sort(key=lambda q: q[0])
    series = [{"name": f"probe τ sweep ({len(pts)} τ)", "x": [q[0] for q in pts], "y": [q[1] for q in pts],
               "labels": [f"{q[2]}: {q[0]:.0%} saved, agreement {q[1]:.2f}" for q in pts]},
              {"name": "fixed token budget", "x": [q[0] for q in bud], "y": [q[1] for q in bud], "dashed": True,
               "labels": [f"{q[2]}: {q[0]:.0%} saved, agreement {q[1]:.2f}" for q in bud]},
              {"name": "live exit at calibrated τ", "x": [live[0]], "y": [live[1]], "r": 6,
               "labels": [f"live: {live[0]:.0%} saved, agreement {live[1]:.2f}"]}]
    return {"type": "line", "title": f"{model}: tokens saved vs agreement with full reasoning ({len(full_rows)} problems)",
            "x_label": "share of reasoning tokens saved", "y_label": "agreement with full reasoning",
            "y_range": [0, 1.02], "series": series, "legend": "bottom-left",
            "caption": "τ sweep: the probe's answer at the first newline where its top probability reaches τ, replayed "
                       "on the full runs' probe traces; fixed budget: the probe's answer after b tokens; the live point "
                       "is this run's exit at the calibrated τ. Hover a point for its τ or budget."}


def page_specs(problems: Sequence[Any], full_rows: Sequence[Any], ours_rows: Sequence[Any], tok: Any,
               m: dict) -> list[dict]:
    """The demo page: headline numbers, every problem's reasoning (tabs), the Pareto plot; `m`: the demo's metrics
    (model, tau, mode, probe_layer and the figures)."""
    model, mode, layer = m["model"], m["mode"], m["probe_layer"]
    tau = math.inf if m["tau"] is None else float(m["tau"])
    stats = {"type": "stats", "title": f"Early exit vs full reasoning · {model} · {len(problems)} test problems",
             "items": [{"label": "reasoning tokens saved", "value": f"{m['tokens_saved']:.0%}"},
                       {"label": "wall-clock saved", "value": f"{m['wallclock_saved']:.0%}",
                        "note": f"{m['exit_seconds']:.1f} s vs {m['full_seconds']:.1f} s"},
                       {"label": "agreement with full reasoning", "value": f"{m['agreement']:.2f}"},
                       {"label": "accuracy (full reasoning)", "value": f"{m['accuracy']:.2f} ({m['accuracy_full']:.2f})"},
                       {"label": "probe overhead", "value": f"{m['probe_overhead']:.1%}"},
                       {"label": f"τ ({mode})", "value": f"{tau:.4g}" if math.isfinite(tau) else "∞",
                        "note": f"probe at layer {layer}"}]}
    items = [reasoning_item(i, p, f, o, tok, tau, mode, layer)
             for i, (p, f, o) in enumerate(zip(problems, full_rows, ours_rows))]
    reasoning = {"type": "reasoning", "title": "The reasoning, problem by problem", "items": items,
                 "legend": {"kept": "kept (generated before the exit)", "skipped": "skipped by the exit",
                            "marker": "exit point", "answer": "answers"},
                 "caption": "The same greedy reasoning run twice: in full, and with the probe's early exit. "
                            "Tabs: ✓/✗ is the exit's answer against the correct option; ←/→ flip."}
    return [stats, reasoning, pareto_spec(model, problems, full_rows, tok, (m["tokens_saved"], m["agreement"]))]
