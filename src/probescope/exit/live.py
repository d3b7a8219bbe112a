"""Early exit for one question, live: the shipped probe of a model, and the token-by-token view (`exit run`)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from rich.console import Console

from ..core.threads import torch_threads


def shipped_probe(model: str) -> Path:
    """The probe shipped for `model` (it may not exist: check `.exists()`)."""
    return Path(__file__).resolve().parents[1] / "assets" / "exit" / f"{model}.probe.safetensors"


def live_run(question: str, model: str, probe_path: str, tau: float, max_new_tokens: int, threads: int,
             out_dir: str | None = None, live: bool = True) -> dict:
    """Generate with early exit for one question, showing it live; write the run folder `out_dir` (if given)."""
    from contextlib import nullcontext

    from rich.live import Live
    from rich.text import Text

    from .answer import LETTERS
    from ..core.io import read_json
    from ..core.models.registry import load_model
    from ..probes.base import load_probe
    from ..report.runs import RunDir
    from ..tasks.mcq import INSTRUCTION
    from .evaluate import trace_plot
    from .generate import ExitPolicy, generate_with_exit
    from .prompts import exit_prompt

    if not isinstance(question, str) or not re.search(r"\(A\).*\(B\)", question, flags=re.S):
        raise ValueError(f"question {str(question)[:60]!r} has no options: early exit here reads a four-option answer; "
                         "write the options into the question as '(A) ... (B) ... (C) ... (D) ...'")
    if out_dir:
        from ..report.runs import check_run_folder

        check_run_folder(out_dir, "exit-run")  # before the model loads: never into another kind of run
    path = Path(probe_path) if probe_path else shipped_probe(model)
    p = load_probe(path)
    cal = (path if path.is_dir() else path.parent) / (path.name.replace(".probe.safetensors", ".calibration.json")
                                                      if not path.is_dir() else "calibration.json")
    cal_d = read_json(cal) if cal.exists() else {}
    if tau < 0:
        tau = (cal_d.get("tau") or math.inf) if cal.exists() else 0.9
    mdl, tok = load_model(model)
    text = question if question.startswith(INSTRUCTION) else f"{INSTRUCTION}\n\n{question}"
    prompt = exit_prompt(text, tok)
    out = Console(quiet=not live)
    ids: list[int] = []
    belief: list = [None]

    def view() -> Text:
        t = Text(tok.decode(ids), style="white")
        t.append("\n\n")
        if belief[0] is not None:
            for L, v in zip(LETTERS, belief[0].tolist()):
                t.append(f"({L}) {'█' * int(round(v * 30)):<30} {v:.2f}\n", style="bold green" if v >= tau else "cyan")
        t.append(f"τ = {tau:.4g}", style="dim")
        return t

    with torch_threads(threads if threads > 0 else None), (Live(view(), console=out, refresh_per_second=12) if live else nullcontext()) as lv:
        def on_token(_row: int, tok_id: int, probs) -> None:
            ids.append(tok_id)
            belief[0] = probs
            if lv is not None:
                lv.update(view())

        pol = ExitPolicy(kind="probe" if math.isfinite(tau) else "never", threshold=tau if math.isfinite(tau) else 1.0,
                         mode=cal_d.get("mode", "probe"))
        res = generate_with_exit(mdl, tok, [prompt], p, pol, max_new_tokens=max_new_tokens, on_token=on_token)
    r = res.rows[0]
    where = (f"stopped by the probe after {r.cut} reasoning tokens" if r.stop == "exit"
             else f"reasoned in full ({r.stop}, {r.cut} tokens)")
    out.print(f"[bold]{where}[/bold]; answer ([bold]{r.answer}[/bold]) "
              f"{' '.join(f'{L}:{v:.2f}' for L, v in zip(LETTERS, r.answer_probs))}; probe overhead {res.probe_overhead:.1%}")
    m = {"question": question, "model": model, "probe": str(path), "tau": tau if math.isfinite(tau) else None,
         "stop": r.stop, "reasoning_tokens": r.cut, "answer": r.answer,
         "answer_probs": dict(zip(LETTERS, r.answer_probs)), "probe_overhead": res.probe_overhead,
         "reasoning": tok.decode(r.reasoning_ids)}
    if out_dir:
        run = RunDir(out_dir, kind="exit-run")
        run.write_config({"model": model, "probe": str(path), "tau": m["tau"], "max_new_tokens": max_new_tokens})
        m["plots"] = [trace_plot(r, tok, tau, None, "probe belief per option, token by token")] if r.probe_trace is not None else []
        run.write_metrics(m)
    return m
