"""Early exit for one question, live: the shipped probe of a model, and the token-by-token view (`exit run`).

A question with options `(A) ... (B) ...` is answered with a letter (the option probe); one without options gets a
free-form answer (the answer-stability probe, `probescope.exit.free`): the exit fires when P(stable) >= τ and the
model then writes its answer after `\nAnswer:`. `--answers mcq|free` forces one kind."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.options import ModelOptions, RunOptions, option
from ..report.job import open_job
from .formats import FormatOptions


AT_BUDGET_RULES = ("forced", "calibrated", "probe", "product")  # exit.at_budget.AT_BUDGET (a test checks they agree)


def shipped_probe(model: str, free: bool = False) -> Path:
    """The probe shipped for `model` (it may not exist: check `.exists()`); `free`: its answer-stability probe."""
    return Path(__file__).resolve().parents[1] / "assets" / "exit" / f"{model}{'.free' if free else ''}.probe.safetensors"


def has_options(question: str) -> bool:
    """Whether the question lists options as '(A) ... (B) ...'."""
    return bool(re.search(r"\(A\).*\(B\)", question, flags=re.S))


def option_letters(question: str) -> tuple[str, ...]:
    """The letters of the options the question lists: (A), (B), ... in alphabetical order up to the first missing
    one (a question with '(A) .. (B) .. (C) ..' has three options)."""
    found = set(re.findall(r"\(([A-Z])\)", question))
    out: list[str] = []
    for L in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if L not in found:
            break
        out.append(L)
    return tuple(out)


@dataclass
class RunConfig(FormatOptions, ModelOptions, RunOptions):
    """Show one reasoning live, token by token: the text, the probe's belief per option, where it stopped."""

    DEFAULTS = {"model": "smollm2-135m-reasoner-v2", "threads": 1}  # threads 1: fastest on a busy few-core machine
    question: str = field(metadata={"argument": True, "nonempty": "give the problem text",
                                    "help": "the problem text, with its options ('... (A) 3 (B) 4 (C) 5 (D) 6') or "
                                            "without them (a free-form answer)"})
    probe: str = option("", "probe folder/file (default: the shipped one for this model)")
    tau: float = option(-1.0, "τ, the exit threshold in [0, 1] (default -1: the τ of the probe's calibration.json; a "
                              "probe without one is an error)", min=0, max=1, also=(-1.0,))
    max_new_tokens: int = option(160, "reasoning token budget", min=1)
    out: str = option("runs/exit-run", "run folder: the trace, the belief plot, report.html")
    answers: str = option("auto", "auto (option letters when the question lists '(A) ... (B) ...', else free-form) | "
                                  "mcq | free", choices=("auto", "mcq", "free"))
    allow_other_model: bool = option(False, "accept a probe recorded for another model id (the same model under "
                                            "another name)")
    compare_full: bool = option(False, "after an exit, also reason in full (a second decode) to say how many tokens "
                                       "the exit saved and whether the full reasoning gives the same answer")
    at_budget: str = option("forced", "the answer where the reasoning budget runs out before the model writes its "
                                      "own answer line: forced (the forced `Answer: (` letter) | calibrated (it divided "
                                      "by the model's letter prior) | probe (the exit probe's belief) | product (probe × "
                                      "forced); see docs/reasoner.md", choices=AT_BUDGET_RULES)
    quiet: bool | None = option(None, cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        q = self.question
        if self.at_budget != "forced" and self.free:
            raise ValueError(f"--at-budget {self.at_budget} reads option letters, but question {q[:60]!r} gets a "
                             "free-form answer: use --at-budget forced, or write the options into the question")
        if self.answers == "mcq" and not has_options(q):
            raise ValueError(f"question {q[:60]!r} has no options but --answers mcq reads a four-option answer: write "
                             "the options into it as '(A) ... (B) ... (C) ... (D) ...', or use --answers free")
        if not self.free:
            from .answer import LETTERS

            opts = option_letters(q)
            skipped = [L for L in LETTERS if f"({L})" in q and L not in opts]
            if skipped:
                raise ValueError(f"question {q[:60]!r} lists option ({skipped[0]}) but not every letter before it: "
                                 "letter the options in order, (A) (B) (C) ...")
            if len(opts) > len(LETTERS):
                raise ValueError(f"question {q[:60]!r} lists {len(opts)} options, (A) to ({opts[-1]}), but early exit "
                                 f"answers with the letters {LETTERS[0]}-{LETTERS[-1]}: give at most {len(LETTERS)} "
                                 "options, or use --answers free")

    @property
    def free(self) -> bool:
        return self.answers == "free" or (self.answers == "auto" and not has_options(self.question))


def live_run(question: str, model: str, probe_path: str, tau: float, max_new_tokens: int, threads: int,
             out_dir: str | None = None, live: bool = True) -> dict:
    """`run_live` with its options as arguments (`out_dir=None`: no run folder)."""
    return run_live(RunConfig(question, model=model, probe=probe_path, tau=tau, max_new_tokens=max_new_tokens,
                              threads=threads, out=out_dir or "", quiet=not live))


STOPS = {"answer_line": "the model wrote its answer line", "eos": "the model ended its text",
         "max_tokens": "the token budget ran out"}


BUDGET_HOW = {"calibrated": "the forced answer at the budget, calibrated against the model's letter prior",
              "probe": "the probe's belief where the budget ran out", "product": "the probe's belief × the forced "
              "answer where the budget ran out"}


def _short(text: str, n: int = 70) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1].rstrip() + "…"


def run_summary(m: dict, max_new_tokens: int) -> str:
    """One sentence from an `exit run`'s metrics: what was asked, where it stopped, the tokens saved (when known),
    the answer and the probe's belief."""
    free = m["answers"] == "free"
    tau = "∞ (never exits)" if m["tau"] is None else f"{m['tau']:.3g}"
    answer = repr(m["answer"]) if free else f"({m['answer']})"
    n = m["reasoning_tokens"]
    if m["stop"] == "exit":
        where = f"the probe stopped the reasoning after {n} tokens (τ = {tau})"
        if "tokens_saved" in m:
            f, saved = m["full_reasoning_tokens"], m["tokens_saved"]
            full_ans = repr(m["full_answer"]) if free else f"({m['full_answer']})"
            where += (f", saving {saved} of the full reasoning's {f} tokens ({saved / max(1, f):.0%}), whose answer "
                      f"{full_ans} is {'the same' if m['full_answer_agrees'] else 'NOT the same'}")
        else:
            where += "; the full reasoning was not run (--compare-full measures the tokens saved)"
    else:
        why = STOPS.get(m["stop"], m["stop"])
        if m["stop"] == "max_tokens":
            why = f"the {max_new_tokens}-token budget ran out"
        where = (f"it reasoned in full, {n} tokens ({why}): the probe never reached τ = {tau} at a check, 0 tokens "
                 "saved")
    how = (BUDGET_HOW[m["at_budget"]] if m["stop"] == "max_tokens" and m.get("at_budget", "forced") != "forced" else
           "the model's answer after its reasoning" if m["stop"] != "exit" else
           "the model's forced answer at the cut" if free or m["mode"] == "forced" else "the probe's own answer")
    belief = m.get("belief") or {}
    said = (f"the probe's P(stable) {belief['stable']:.2f}" if free and "stable" in belief else
            "the probe's belief " + ", ".join(f"{k} {v:.2f}" for k, v in belief.items()) if belief else "")
    return (f"Asked “{_short(m['question'])}”: {where}. Answer {answer} ({how})"
            + (f"; {said}" if said else "") + f"; probe overhead {m['probe_overhead']:.1%}.")


def run_live(cfg: RunConfig, model: Any = None, tokenizer: Any = None) -> dict:
    """Generate with early exit for one question with `cfg.threads` torch threads, shown live unless `cfg.quiet`;
    write the run folder `cfg.out` (if given) and return its metrics. `model`, `tokenizer`: a loaded model instead
    of `cfg.model` (its shipped probe is still looked up by `cfg.model`)."""
    with open_job(cfg, "exit-run", model, tokenizer) as job:
        return _live(cfg, job)


def _live(cfg: RunConfig, job: Any) -> dict:
    from contextlib import nullcontext

    from rich.live import Live
    from rich.text import Text

    from .answer import LETTERS
    from ..probes.base import load_probe
    from ..report.runs import RunDir
    from ..tasks.mcq import FREE_INSTRUCTION, INSTRUCTION
    from .calibrate import calibration_path, load_calibration
    from .drift import ExitDriftWarning
    from .evaluate import trace_plot
    from .free import STABILITY_CLASSES
    from .generate import ExitPolicy, generate_with_exit
    from .prompts import exit_prompt

    question, model, probe_path, max_new_tokens, out_dir = cfg.question, cfg.model, cfg.probe, cfg.max_new_tokens, cfg.out
    live, fmt, free = not cfg.quiet, cfg.reasoning_format, cfg.free
    if out_dir:
        from ..report.runs import check_run_folder

        check_run_folder(out_dir, "exit-run")  # before the model loads: never into another kind of run
    path = Path(probe_path) if probe_path else shipped_probe(model, free)
    if not probe_path and not path.exists():
        raise ValueError(f"no {'answer-stability ' if free else ''}probe is shipped for {model!r}: train one with "
                         f"`probescope exit collect{' --answers free' if free else ''}` and `exit train`, then pass "
                         "--probe FOLDER")
    p = load_probe(path)
    need = STABILITY_CLASSES if free else tuple(LETTERS)  # an option probe reads A-D (a question may use fewer)
    if tuple(str(c) for c in p.classes) != need:
        raise ValueError(f"the probe {str(path)!r} has classes {list(p.classes)}, but a "
                         f"{'free-form' if free else 'multiple-choice'} question needs {list(need)}: " + ("pass an answer-stability probe (`exit train` on a "
                                                                  "collect with --answers free)" if free else
                                                                  "pass an option probe, or use --answers free"))
    kind = "free" if free else "mcq"
    # the options the question has (three of A-D: the probe's belief and the forced answer read over those three)
    classes = STABILITY_CLASSES if free else option_letters(question)
    # τ and the answer mode from the probe's calibration (missing without --tau, or not this probe's: an error);
    # --tau replaces its τ; without a calibration file the answer is the probe's own ("probe" mode)
    tau, mode, cal_d = cfg.tau, "probe", None
    if cfg.tau < 0 or calibration_path(path).exists():
        cal_d = load_calibration(path, p, kind)
        tau, mode = (cal_d["tau"] if cfg.tau < 0 else cfg.tau), cal_d.get("mode", "probe")
    settings = {"model": model, "probe": str(path), "tau": tau if math.isfinite(tau) else None,
                "max_new_tokens": max_new_tokens, "answers": kind, "format": fmt.to_dict()}
    if cfg.at_budget != "forced":  # recorded only when it changes the answer (older run folders stay comparable)
        settings["at_budget"] = cfg.at_budget
    if out_dir:  # a rerun into a run with other settings is refused here, before the model loads or decodes
        check_run_folder(out_dir, "exit-run", settings)
    mdl, tok = job.model, job.tokenizer
    instruction = FREE_INSTRUCTION if free else INSTRUCTION
    text = question if question.startswith(instruction) else f"{instruction}\n\n{question}"
    fmt.check(tok, () if free else classes)
    prompt = exit_prompt(text, tok, fmt=fmt)
    out = Console(quiet=not live)
    ids: list[int] = []
    belief: list = [None]

    def view() -> Text:
        t = Text(tok.decode(ids), style="white")
        t.append("\n\n")
        if belief[0] is not None:
            for L, v in zip(classes, belief[0].tolist()):
                t.append(f"({L}) {'█' * int(round(v * 30)):<30} {v:.2f}\n",
                         style="bold green" if v >= tau and (not free or L == "stable") else "cyan")
        t.append(f"τ = {tau:.4g}\n", style="dim")  # the summary starts on a line of its own
        return t

    with (Live(view(), console=out, refresh_per_second=12) if live else nullcontext()) as lv:
        def on_token(_row: int, tok_id: int, probs) -> None:
            ids.append(tok_id)
            belief[0] = probs
            if lv is not None:
                lv.update(view())

        # the calibration's rule (its consecutive checks, min_tokens and confidence range: the drift check), at τ
        common = dict(tau=tau, mode="forced" if free else mode, boundary=fmt.boundary, every=fmt.every, answers=kind,
                      at_budget=cfg.at_budget)
        pol = ExitPolicy.from_calibration(cal_d, **common) if cal_d is not None else ExitPolicy(kind="probe", **common)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExitDriftWarning)  # said once below, in words
            res = generate_with_exit(mdl, tok, [prompt], p, pol, max_new_tokens=max_new_tokens, on_token=on_token,
                                     fmt=fmt, letters=LETTERS if free else classes,
                                     allow_other_model=cfg.allow_other_model)
    r = res.rows[0]
    full = None
    if cfg.compare_full and r.stop == "exit":  # the same question reasoned in full: what the exit saved
        full = generate_with_exit(mdl, tok, [prompt], p, ExitPolicy(kind="never", answers=kind),
                                  max_new_tokens=max_new_tokens, fmt=fmt, letters=LETTERS if free else classes,
                                  allow_other_model=cfg.allow_other_model).rows[0]
    m = {"question": question, "model": model, "probe": str(path), "tau": tau if math.isfinite(tau) else None,
         "mode": pol.mode, "at_budget": pol.at_budget,
         "answers": "free" if free else "mcq", "stop": r.stop, "reasoning_tokens": r.cut, "answer": r.answer,
         "answer_probs": dict(zip(classes, r.answer_probs)), "probe_overhead": res.probe_overhead,
         "belief": (dict(zip(classes, [round(float(v), 4) for v in r.probe_trace[-1].tolist()]))
                    if r.probe_trace is not None and len(r.probe_trace) else {}),
         "reasoning": tok.decode(r.reasoning_ids)}
    if r.stop != "exit":
        m.update(full_reasoning_tokens=r.cut, tokens_saved=0)
    elif full is not None:
        m.update(full_reasoning_tokens=full.cut, tokens_saved=full.cut - r.cut, full_answer=full.answer,
                 full_answer_agrees=full.answer == r.answer)
    m["summary"] = run_summary(m, max_new_tokens)
    out.print(m["summary"], markup=False, emoji=False, highlight=False, soft_wrap=True)
    if res.drift:  # live confidences left the calibration's range: said even with --quiet
        m["drift"] = res.drift
        Console(stderr=True).print(f"Warning: {res.drift}", style="yellow", markup=False, emoji=False,
                                   highlight=False, soft_wrap=True)
    if out_dir:
        run = RunDir(out_dir, kind="exit-run")
        run.write_config(settings)
        title = "probe P(stable): the forced answer is already the final one" if free else \
            "probe belief per option, token by token"
        m["plots"] = [trace_plot(r, tok, tau, None, title, classes)] if r.probe_trace is not None else []
        run.write_metrics(m)
    return m
