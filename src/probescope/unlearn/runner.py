"""Whole jobs: `run_unlearn` (subject → before → unlearn → after, into a run folder) and `run_audit` (the attacks on
a finished run, into RUN/audit.json, with the report page's curves).

Run folder: `config.json`, `subject.json` (the exact cloze items and texts), `before.json`, `weights.safetensors`
(only the changed tensors) + `unlearn.json` (site, method, model), `after.json`, `metrics.json`, `audit.json`.
A killed run resumes: the before scores and the training checkpoint are reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..core.io import atomic_write_json, read_json
from ..core.options import DeviceOptions, ModelOptions, RunOptions
from ..report.job import open_job
from ..report.runs import RunDir
from .score import chance, evaluate
from .subjects import (SUBJECTS, ClozeItem, antonyms, capital_texts, capitals, check_sets, country_facts,
                       read_subject, split_items)
from .train import UnlearnConfig, _opt, apply_weights, int_list, unlearn

RETAIN_DOCS = 48  # default-corpus docs in the retain set
UTILITY_START = 200  # utility docs are taken from here on: never in the retain set


@dataclass
class UnlearnRunConfig(ModelOptions, RunOptions, DeviceOptions):
    """Unlearn a topic (default: country capitals on SmolLM2-135M) and score forget/retain/utility before and after
    (each field doubles as a CLI option; `unlearn`'s fields too)."""

    DEFAULTS = {"device": "cpu"}

    forget: str = _opt("capitals", "'capitals' (built in) or a JSONL/CSV of texts and prompt/answer rows",
                       nonempty="give 'capitals' or a JSONL/CSV file of the facts to forget")
    retain: str = _opt("default", "'default' (country facts for capitals + default-corpus text) or a JSONL/CSV/TXT "
                                  "of texts to keep")
    retain_eval: str = _opt("antonyms", "'antonyms', 'none' or a JSONL/CSV of prompt/answer rows: a retain task "
                                        "scored before and after")
    task_eval: str = _opt("", "a task scored before and after as general ability: 'arithmetic' (generated sums, "
                              "4-way cloze) or a JSONL/CSV of prompt/answer rows; empty: none")
    n_facts: int = _opt(60, "capitals: the most populous countries considered", min=1)
    n_eval: int = _opt(20, "forget facts held out of training and scored (the figure that counts)", min=1)
    known_only: bool = _opt(True, "keep only the forget facts the model answers right before (a fact it never "
                                  "knew cannot be forgotten)", flag="--known-only/--all-facts")
    utility_docs: int = _opt(16, "default-corpus documents whose perplexity is the utility score", min=1)
    utility_len: int = _opt(64, "tokens per utility document", min=2)
    out: str = _opt("runs/unlearn", "run folder (resumed if it holds a checkpoint)")
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    resume: bool = _opt(True, "resume from the checkpoint in --out (--no-resume: start over there)",
                        flag="--resume/--no-resume")
    quiet: bool = field(default=False, metadata={"cli": False})  # set from --quiet / --json

    def to_dict(self) -> dict[str, Any]:
        """config.json: the settings (not how this process runs: resume, quiet)."""
        d = dataclasses.asdict(self)
        d["unlearn"] = self.unlearn.to_dict()
        for k in ("resume", "quiet"):
            d.pop(k)
        return d


UnlearnRun = UnlearnRunConfig  # the old name, still imported by bench/unlearn.py


def _default_corpus() -> list[str]:
    from ..core.data import default_corpus

    return list(default_corpus())


def build_subject(cfg: UnlearnRunConfig, model: nn.Module, tok: Any) -> dict[str, Any]:
    """Forget/retain texts and cloze items (the held-out forget facts are never trained on)."""
    from .score import cloze_correct

    docs = _default_corpus()
    utility = docs[UTILITY_START:UTILITY_START + cfg.utility_docs]
    dropped: list[str] = []
    if cfg.forget == "capitals":
        items = capitals(cfg.n_facts, seed=cfg.seed)
    else:
        texts, items = read_subject(cfg.forget, seed=cfg.seed)
        if not items:
            raise ValueError(f"{cfg.forget} has texts but no prompt/answer rows: unlearning needs facts to score "
                             "(add rows with 'prompt' and 'answer')")
    ok = cloze_correct(model, tok, items)
    known, base = float(np.mean(ok)), chance(items)
    if known - base < 0.15:
        raise ValueError(
            f"the model never knew the forget set: it answers {known:.2f} of the {len(items)} forget facts before "
            f"unlearning (chance {base:.2f}); unlearning them would be meaningless. Teach it first, or pick facts it "
            "answers")
    if cfg.known_only:
        dropped = [it.key for it, k in zip(items, ok) if not k]
        items = [it for it, k in zip(items, ok) if k]
    if len(items) <= cfg.n_eval:
        raise ValueError(f"only {len(items)} forget facts{' the model knows' if cfg.known_only else ''}: cannot hold "
                         f"out n_eval={cfg.n_eval}; lower --n-eval or give more facts")
    train, ev = split_items(items, cfg.n_eval, seed=cfg.seed)
    if cfg.forget == "capitals":
        forget_texts = capital_texts(train)
    else:
        held = {it.statement() for it in ev}
        forget_texts = [t for t in texts if t not in held]
    if cfg.retain == "default":
        retain_texts = (country_facts(max(cfg.n_facts * 2, 120)) if cfg.forget == "capitals" else []) + docs[:RETAIN_DOCS]
    else:
        retain_texts, _ = read_subject(cfg.retain, seed=cfg.seed)
    if cfg.retain_eval == "antonyms":
        retain_eval = antonyms(seed=cfg.seed)
    elif cfg.retain_eval in ("none", ""):
        retain_eval = []
    else:
        _, retain_eval = read_subject(cfg.retain_eval, seed=cfg.seed)
    if cfg.task_eval in ("", "none"):
        task_eval = []
    elif cfg.task_eval in SUBJECTS:
        task_eval = SUBJECTS[cfg.task_eval](seed=cfg.seed)
    else:
        _, task_eval = read_subject(cfg.task_eval, seed=cfg.seed)
    check_sets(forget_texts, retain_texts)
    return {"known_before": known, "chance": base, "forget_texts": forget_texts, "retain_texts": retain_texts,
            "forget_train": train, "forget_eval": ev,
            "retain_eval": retain_eval, "task_eval": task_eval, "utility": utility, "dropped_unknown": dropped}


def _items(rows) -> list[ClozeItem]:
    return [ClozeItem.from_dict(r) for r in rows]


def save_subject(path: Path, sub: dict[str, Any]) -> None:
    atomic_write_json(path, {k: ([it.to_dict() for it in v] if isinstance(v, list) and v and isinstance(v[0], ClozeItem) else v)
                             for k, v in sub.items()})


def load_subject(path: Path) -> dict[str, Any]:
    d = read_json(path)
    for k in ("forget_train", "forget_eval", "retain_eval", "task_eval"):
        d[k] = _items(d.get(k, []))
    return d


def _brief(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in ev.items()}


def run_unlearn(cfg: UnlearnRunConfig, model: nn.Module | None = None, tok: Any = None, quiet: bool | None = None,
                resume: bool | None = None) -> dict[str, Any]:
    """Score before, unlearn, score after; everything into `cfg.out`. Returns the metrics. `quiet` and `resume`
    default to the config's."""
    quiet = cfg.quiet if quiet is None else quiet
    resume = cfg.resume if resume is None else resume
    with open_job(cfg, "unlearn", model, tok) as job:
        model, tok = job.model, job.tokenizer
        cfg.unlearn.validate(model)  # layers against the model, before anything is written
        run = job.run
        out = run.path
        run.write_config(cfg.to_dict())
        if resume and (out / "subject.json").exists() and (out / "before.json").exists():
            sub = load_subject(out / "subject.json")
            before = read_json(out / "before.json")
        else:
            sub = build_subject(cfg, model, tok)
            before = evaluate(model, tok, sub["forget_eval"], sub["retain_eval"], sub["utility"], cfg.utility_len,
                              task=sub["task_eval"])
            save_subject(out / "subject.json", sub)
            atomic_write_json(out / "before.json", before)
        rec = unlearn(model, tok, sub["forget_texts"], sub["retain_texts"], cfg.unlearn, out, resume=resume,
                      quiet=quiet)
        after = evaluate(model, tok, sub["forget_eval"], sub["retain_eval"], sub["utility"], cfg.utility_len,
                         task=sub["task_eval"])
        atomic_write_json(out / "after.json", after)
    metrics = summarize(before, after, rec, sub)
    run.write_metrics(metrics)
    return metrics


def summarize(before: dict, after: dict, rec: dict, sub: dict) -> dict[str, Any]:
    b, a = _brief(before), _brief(after)
    goals = {"forget_at_chance": a["forget"]["acc"] <= a["forget"]["chance"] + 0.05}
    if "retain" in a:
        goals["retain_within_3_points"] = a["retain"]["acc"] >= b["retain"]["acc"] - 0.03
    if "utility" in a:
        goals["perplexity_within_5pct"] = a["utility"]["ppl"] <= 1.05 * b["utility"]["ppl"]
    labels, values, los, his = [], [], [], []
    if "task" in a:
        goals["task_within_3_points"] = a["task"]["acc"] >= b["task"]["acc"] - 0.03
    for k in ("forget", "retain", "task"):
        if k in b:
            labels += [f"{k} before", f"{k} after"]
            values += [b[k]["acc"], a[k]["acc"]]
            los += [b[k].get("lo"), a[k].get("lo")]
            his += [b[k].get("hi"), a[k].get("hi")]
    plots = [{"type": "bar", "title": "Cloze accuracy before / after (chance 0.25; 95% intervals)", "labels": labels,
              "values": values, "lo": los, "hi": his, "x_label": "fact set, before / after", "y_label": "accuracy"}]
    if "utility" in b:
        plots.append({"type": "bar", "title": "Perplexity on the default corpus (utility; 95% bootstrap intervals)",
                      "labels": ["before", "after"], "values": [b["utility"]["ppl"], a["utility"]["ppl"]],
                      "lo": [b["utility"].get("lo"), a["utility"].get("lo")],
                      "hi": [b["utility"].get("hi"), a["utility"].get("hi")],
                      "x_label": "model", "y_label": "perplexity"})
    hist = rec.get("history", [])
    if hist:
        plots.append({"type": "line", "title": f"{rec['method']} loss", "x_label": "step", "y_label": "loss",
                      "series": [{"name": "loss", "x": [h["step"] for h in hist], "y": [h["loss"] for h in hist]}]})
    facts = fact_outcomes(before, after, sub)
    rows = [[fact, "forgotten"] for fact in facts["forgotten"]] + [[fact, "still known"] for fact in facts["kept"]] + \
        [[fact, "retain fact lost"] for fact in facts["retain_lost"]]
    if rows:
        plots.insert(0, {"type": "table", "title": "Held-out forget facts the model knew before: forgotten or still "
                                                   "known (and retain facts lost)", "columns": ["fact", "after"],
                         "rows": rows})
    return {"method": rec["method"], "site": rec["site"], "model": rec["model"], "before": b, "after": a,
            "facts": facts,
            "goals": goals, "c": rec.get("c"), "median_token_norm": rec.get("median_token_norm"),
            "update_layers": rec["update_layers"], "lr": rec["lr"], "steps": rec["steps"],
            "n_forget_texts": len(sub["forget_texts"]), "n_retain_texts": len(sub["retain_texts"]),
            "dropped_unknown": sub.get("dropped_unknown", []), "plots": plots}


def _fact(item: Any) -> str:
    prompt = item["prompt"] if isinstance(item, dict) else item.prompt
    answer = item["answer"] if isinstance(item, dict) else item.answer
    return f"{prompt.rstrip()} {answer.strip()}"


def fact_outcomes(before: dict, after: dict, sub: dict) -> dict[str, list[str]]:
    """The facts by name: held-out forget facts known before and `forgotten` or still known (`kept`) after, those
    never known (`never_known`: nothing to forget), and retain facts known before and lost after."""
    out: dict[str, list[str]] = {"forgotten": [], "kept": [], "never_known": [], "retain_lost": []}
    fb, fa = before["forget"].get("correct"), after["forget"].get("correct")
    if fb is not None and fa is not None:
        for item, b, a in zip(sub["forget_eval"], fb, fa):
            out["forgotten" if b and not a else "kept" if b else "never_known"].append(_fact(item))
    rb, ra = before.get("retain", {}).get("correct"), after.get("retain", {}).get("correct")
    if rb is not None and ra is not None:
        out["retain_lost"] = [_fact(i) for i, b, a in zip(sub.get("retain_eval") or [], rb, ra) if b and not a]
    return out


# ------------------------------------------------------------------------------------------------------------
# Audit
# ------------------------------------------------------------------------------------------------------------


ATTACKS = ("relearn", "probe", "direction")


@dataclass
class AuditConfig(RunOptions, DeviceOptions):
    """Relearning, per-layer probes and direction removal on RUN, each reported as "knowledge recovered" (each field
    doubles as a CLI option)."""

    DEFAULTS = {"device": "cpu"}

    run: str = _opt("runs/unlearn", "a finished `probescope unlearn` run folder", argument=True)
    attacks: tuple[str, ...] = _opt(("relearn", "probe", "direction"), "any of relearn, probe, direction",
                                    parse=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                                    choices=ATTACKS, nonempty="give any of " + ", ".join(ATTACKS))
    steps: tuple[int, ...] = _opt((5, 20, 100), "relearning: LoRA steps scored", parse=int_list("--steps"), min=0)
    relearn_lr: float = _opt(1e-4, "relearning: LoRA learning rate", gt=0)
    unrelated_texts: int = _opt(10, "relearning (b): this many retain texts (unrelated to the forget topic)", min=1)
    relearn_max_len: int = _opt(32, "relearning: tokens per text at most (a step runs the whole model on each)",
                                min=2)
    spans: tuple[int, ...] = _opt((1, 4), "direction removal at ℓ+1..ℓ+k for each k", parse=int_list("--spans"),
                                  min=1)
    probe_folds: int = _opt(5, "folds of the per-layer probes (grouped by entity)", min=2)
    quiet: bool = field(default=False, metadata={"cli": False})  # set from --quiet / --json

    def __post_init__(self) -> None:
        super().__post_init__()
        # '' on the CLI (or None) means the defaults; lists become tuples
        self.attacks = tuple(self.attacks)
        self.steps = tuple(self.steps or (5, 20, 100))
        self.spans = tuple(self.spans or (1,))


def run_audit(cfg: AuditConfig, base: nn.Module | None = None, tok: Any = None, quiet: bool | None = None,
              control: dict | None = None) -> dict[str, Any]:
    """Run the attacks on `cfg.run` (against `base`, else the run's model loaded on `cfg.device`); writes
    RUN/audit.json and adds the curves to the report page. `quiet` defaults to the config's."""
    import copy

    from . import audit as A

    quiet = cfg.quiet if quiet is None else quiet
    run = Path(cfg.run)
    for name in ("unlearn.json", "subject.json", "before.json", "after.json", "weights.safetensors"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name} does not exist: is {run} a finished `probescope unlearn` run?")
    rec = read_json(run / "unlearn.json")
    sub = load_subject(run / "subject.json")
    before, after = read_json(run / "before.json"), read_json(run / "after.json")
    fb, fa = before["forget"]["correct"], after["forget"]["correct"]
    with open_job(cfg, None, base, tok, name=rec["model"]) as job:
        base, tok = job.model, job.tokenizer
        unl = apply_weights(copy.deepcopy(base), run)
        res: dict[str, Any] = {"site": rec["site"], "method": rec["method"], "model": rec["model"],
                               "forget_before": before["forget"]["acc"], "forget_after": after["forget"]["acc"]}
        if "relearn" in cfg.attacks:
            unrelated = [t for t in sub["retain_texts"] if len(t) < 400][-cfg.unrelated_texts:]
            rl = A.relearn(unl, base, tok, sub["forget_eval"], fb, fa, unrelated, cfg.steps, lr=cfg.relearn_lr,
                           seed=cfg.seed, quiet=quiet, control=control, max_len=cfg.relearn_max_len)
            res["_control"] = rl.pop("_control")
            res["relearn"] = rl
        if "probe" in cfg.attacks:
            items = list(sub["forget_train"]) + list(sub["forget_eval"])
            pb = A.probe_layers(base, tok, items, folds=cfg.probe_folds, seed=cfg.seed)
            pa = A.probe_layers(unl, tok, items, folds=cfg.probe_folds, seed=cfg.seed)
            res["probe"] = {"what": "true vs false capital statement, last token, grouped 5-fold CV by entity",
                            "before": pb, "after": pa}
        if "direction" in cfg.attacks:
            res["direction"] = A.direction_removal(unl, base, tok, sub["forget_train"], sub["forget_eval"],
                                                   sub["retain_eval"], sub["utility"][:8], fb, fa, rec["layer"],
                                                   cfg.spans, seed=cfg.seed)
    control_out = res.pop("_control", None)
    res["plots"] = audit_plots(res)
    atomic_write_json(run / "audit.json", res)
    m = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    m["plots"] = [p for p in m.get("plots", []) if not p.get("audit")] + res["plots"]
    m["audit"] = audit_summary(res)
    RunDir(run).write_metrics(m)
    if control_out is not None:
        res["_control"] = control_out
    return res


def audit_summary(res: dict[str, Any]) -> dict[str, Any]:
    """Flat "knowledge recovered" figures (share of the lost forget accuracy that came back)."""
    s: dict[str, Any] = {}
    for name in ("half_forget", "unrelated"):
        for row in res.get("relearn", {}).get(name, {}).get("rows", []):
            s[f"relearn_{name}_{row['steps']}"] = {k: row[k] for k in ("recovered", "lo", "hi", "acc", "control_acc")}
    for row in res.get("direction", {}).get("rows", []):
        s[f"direction_{row.get('source', 'train')}_k{row['k']}"] = {"recovered": row["recovered"], "lo": row["lo"], "hi": row["hi"], "acc": row["acc"],
                                       "retain_acc": (row["retain"] or {}).get("acc"),
                                       "ppl": (row["utility"] or {}).get("ppl")}
    if "probe" in res:
        b, a = res["probe"]["before"], res["probe"]["after"]
        s["probe_max_before"] = max(v["acc"] for v in b.values())
        s["probe_max_after"] = max(v["acc"] for v in a.values())
    return s


def audit_plots(res: dict[str, Any]) -> list[dict[str, Any]]:
    plots = []
    rl = res.get("relearn")
    if rl:
        series = []
        for name in ("half_forget", "unrelated"):
            rows, r0 = rl[name]["rows"], rl[name]
            # N = 0: where each model starts (the unlearned model's accuracy, the base model's for the control)
            x0 = [0] if "after" in r0 and "before" in r0 else []
            series.append({"name": f"{name} (unlearned)", "x": x0 + [r["steps"] for r in rows],
                           "y": ([r0["after"]["acc"]] if x0 else []) + [r["acc"] for r in rows]})
            series.append({"name": f"{name} (control: base)", "x": x0 + [r["steps"] for r in rows],
                           "y": ([r0["before"]["acc"]] if x0 else []) + [r["control_acc"] for r in rows]})
        plots.append({"type": "line", "title": "Relearning: forget accuracy after N LoRA steps (N = 0: before the "
                      "attack)", "x_label": "LoRA steps N", "y_label": "accuracy", "series": series,
                      "y_range": [0, 1], "audit": True})
    if "probe" in res:
        b, a = res["probe"]["before"], res["probe"]["after"]
        layers = sorted(int(k) for k in b)
        plots.append({"type": "line", "title": "Linear probe (true vs false fact) accuracy by layer (95% intervals)",
                      "x_label": "layer", "y_label": "accuracy", "y_range": [0, 1], "audit": True,
                      "series": [{"name": name, "x": layers, "y": [d[str(x)]["acc"] for x in layers],
                                  **({"lo": [d[str(x)]["lo"] for x in layers], "hi": [d[str(x)]["hi"] for x in layers]}
                                     if all("lo" in d[str(x)] and "hi" in d[str(x)] for x in layers) else {})}
                                 for name, d in (("before", b), ("after", a))]})
    if "direction" in res:
        rows = res["direction"]["rows"]
        fin = [bool(np.isfinite(r["recovered"])) for r in rows]
        plots.append({"type": "bar", "title": "Direction removal: knowledge recovered (95% intervals)", "audit": True,
                      "labels": [f"{r.get('source', 'train')} ℓ+1..ℓ+{r['k']}" for r in rows],
                      "values": [r["recovered"] if f else 0.0 for r, f in zip(rows, fin)],
                      "lo": [r.get("lo") if f else None for r, f in zip(rows, fin)],
                      "hi": [r.get("hi") if f else None for r, f in zip(rows, fin)],
                      "x_label": "directions removed (source, layers)", "y_label": "knowledge recovered"})
    return plots
