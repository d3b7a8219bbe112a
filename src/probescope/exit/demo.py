"""The early-exit demo: the reasoner with its shipped probe on a handful of test problems, live, vs full reasoning.

Prints the table (tokens and wall-clock saved, agreement, accuracy, probe overhead) and writes a report page with
the Pareto curve of this run (probe τ sweep vs token budgets, from the same problems) and one reasoning with the
probe's belief per option along it and the exit point marked.
"""

from __future__ import annotations

import math
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from .answer import LETTERS
from ..core.io import read_json
from ..probes.base import load_probe, torch_threads
from ..report.runs import RunDir
from ..tasks import mcq
from .live import shipped_probe
from .evaluate import trace_plot
from .generate import ExitPolicy, generate_with_exit
from .prompts import make_prompts

MODEL = "smollm2-135m-reasoner"


def shipped_available(model: str = MODEL) -> bool:
    return shipped_probe(model).exists()


def run_exit_demo(model: str = MODEL, out: str = "runs/demo", quiet: bool = False, n: int = 8,
                  max_new_tokens: int = 160) -> dict:
    """Early exit vs full reasoning, live, on `n` test problems; report page in `out`."""
    console = Console(quiet=quiet)
    path = shipped_probe(model)
    probe = load_probe(path)
    cal_path = path.with_name(path.name.replace(".probe.safetensors", ".calibration.json"))
    cal = read_json(cal_path) if cal_path.exists() else {}
    tau = math.inf if cal.get("tau") is None else float(cal["tau"])
    mode = cal.get("mode", "probe")
    from ..core.models.registry import load_model

    t0 = time.perf_counter()
    mdl, tok = load_model(model)
    load_s = time.perf_counter() - t0
    problems = mcq.generate("test", n, seed=1)
    prompts = make_prompts(problems, tok)
    with torch_threads(1):
        full = generate_with_exit(mdl, tok, prompts, probe, ExitPolicy(kind="never"), max_new_tokens=max_new_tokens,
                                  batch_size=n, quiet=quiet)
        pol = ExitPolicy(kind="probe" if math.isfinite(tau) else "never", threshold=tau if math.isfinite(tau) else 1.0,
                         mode=mode)
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
    table = Table(title=f"{model}: early exit (τ = {tau:.4g}, layer {probe.layer}) vs full reasoning, {n} test problems")
    for c in ("tokens saved", "wall-clock saved", "agreement", "accuracy (full)", "probe overhead"):
        table.add_column(c)
    table.add_row(f"{m['tokens_saved']:.1%}", f"{m['wallclock_saved']:.1%}", f"{agree:.2f}", f"{acc:.2f} ({acc_full:.2f})",
                  f"{m['probe_overhead']:.2%}")
    console.print(table)
    # Pareto from this run: the probe's τ sweep replayed on the full runs' probe traces, and token budgets
    from .calibrate import Trace, simulate
    from .collect import checkpoints

    nl = tok("\n", add_special_tokens=False)["input_ids"][0]
    traces = []
    for r, p in zip(full.rows, problems):
        cps = checkpoints(r.fed_ids, r.cut, nl)
        P = r.probe_trace[[j for _, j in cps]] if cps and r.probe_trace is not None else None
        traces.append(Trace(p.id, "test", p.letter, r.answer, r.cut, np.array([c for c, _ in cps], dtype=int),
                            P.max(-1).values.numpy() if P is not None else np.zeros(0),
                            [LETTERS[int(k)] for k in P.argmax(-1)] if P is not None else []))
    taus = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]
    outs = [simulate(traces, t) for t in taus]
    plots = [{"type": "line", "title": f"{model}: tokens saved vs agreement (probe's own answer, τ sweep)",
              "x_label": "share of reasoning tokens saved", "y_label": "agreement with full reasoning",
              "series": [{"name": "probe (τ sweep)", "x": [o.tokens_saved for o in outs], "y": [o.agreement for o in outs]},
                         {"name": "live exit at calibrated τ", "x": [m["tokens_saved"]], "y": [agree]}],
              "caption": "the τ sweep replays the probe's answer at each newline of the full runs; the live point is the "
                         f"{'probe' if mode == 'probe' else 'forced'} answer at the live exit"}]
    pick = next((k for k, r in enumerate(ours.rows) if r.stop == "exit"), 0)
    plots.append(trace_plot(full.rows[pick], tok, tau, None, f"probe belief along one full reasoning ({problems[pick].id})"))
    plots[-1]["vlines"] = [{"x": ours.rows[pick].cut + 1, "label": f"exit ({ours.rows[pick].stop})"}]
    m["plots"] = plots
    run = RunDir(out, kind="exit-demo")
    run.write_config({"model": model, "probe": str(path), "n": n, "max_new_tokens": max_new_tokens})
    run.write_metrics(m)  # also renders report.html
    console.print(f"report: {run.path / 'report.html'}")
    return m
