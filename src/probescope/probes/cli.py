"""`probescope probe train | eval | sweep | shift | negation | regimes | leakage | organism | sandbag | tasks`: the options are the config dataclasses' fields
(`clikit.config_command`); each command calls one `run_*` of the wing and prints its table."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..clikit import config_command, lazy
from .config import (EvalConfig, LeakageConfig, NegationConfig, OrganismConfig, RegimesConfig, SandbagConfig, ShiftConfig,
                     SweepConfig, TrainConfig)

app = typer.Typer(help="Train and evaluate probes on a model's activations.", no_args_is_help=True)
console = Console(stderr=True)


def _f(v: Any, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt) if isinstance(v, float) else str(v)


def _asked(cfg: Any) -> str:
    """What the probes were asked to find: the built-in task or the data file, on which model."""
    d = getattr(cfg, "data", None)
    what = (f"'{d.task}'" if d.task else f"the labels of {d.data}") if d is not None and not isinstance(d, str) else \
        "the task"
    model = getattr(d, "model", None) or getattr(cfg, "model", None)
    return what + (f" on {model}" if model else "")


def _acc_ci(m: dict) -> str:
    """Accuracy with its 95% Wilson interval (the share of `n` examples classified right, already counted)."""
    from ..core.stats import wilson

    if m.get("accuracy") is None or not m.get("n"):
        return _f(m.get("accuracy"), ".2f")
    lo, hi = wilson(round(m["accuracy"] * m["n"]), int(m["n"]))
    return f"{m['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]"


def _verdict(auroc: float | None) -> str:
    if auroc is None:
        return "it could not be scored"
    return "it separates the classes well" if auroc >= 0.9 else "it separates the classes somewhat" \
        if auroc >= 0.7 else "it barely separates the classes (chance is 0.50)"


@app.command("tasks")
def tasks_cmd() -> None:
    """List the built-in probe tasks."""
    from .tasks import list_tasks

    t = Table("task", "what")
    for k, v in list_tasks().items():
        t.add_row(k, v)
    Console().print(t)


def _show_train(res: dict, cfg: Any = None) -> None:
    """The split table, then one sentence: the probe asked for and how well it reads the task on the test split."""
    t = Table("split", "accuracy", "auroc", "f1", "ece", "recall@1%fpr", title=f"{res['kind']} probe, layer {res['layer']}")
    for split in ("val", "test"):
        m = res[split]
        t.add_row(split, *(_f(m.get(k)) for k in ("accuracy", "auroc", "f1", "ece", "recall_at_0.01_fpr")))
    mix = res.get("mixed_domains")
    if mix:
        for d, m in mix["test_by_domain"].items():
            t.add_row(f"test ({d})", *(_f(m.get(k)) for k in ("accuracy", "auroc", "f1", "ece", "recall_at_0.01_fpr")))
    Console().print(t)
    if mix:
        console.print(mix["note"])
    te = res["test"]
    console.print(f"A {res['kind']} probe for {_asked(cfg)} at layer {res['layer']}: test AUROC {_f(te.get('auroc'), '.2f')}, "
                  f"accuracy {_acc_ci(te)} on {te.get('n')} examples (95% interval); {_verdict(te.get('auroc'))}.",
                  soft_wrap=True)


_NAMES = {"n": "examples", "auroc": "AUROC", "f1": "F1", "ece": "calibration error (ECE)",
          "recall_at_0.01_fpr": "recall at 1% false positives", "threshold_at_fpr": "score threshold at 1% false positives"}


def _show_eval(res: dict, cfg: Any = None) -> None:
    """The metrics in words, then one sentence: the saved probe scored on which data, and how well."""
    m = res["metrics"]
    t = Table("metric", "value", title=f"{res['kind']} probe, layer {res['layer']}, {res['split']}")
    for k, v in m.items():
        t.add_row(_NAMES.get(k, k.replace("_", " ")), _acc_ci(m) if k == "accuracy" else _f(v))
    Console().print(t)
    console.print(f"The saved {res['kind']} probe (layer {res['layer']}) scored on the {res['split']} split of "
                  f"{_asked(cfg)}: AUROC {_f(m.get('auroc'), '.2f')}, accuracy {_acc_ci(m)} (95% interval); "
                  f"{_verdict(m.get('auroc'))}.", soft_wrap=True)


def _show_sweep(res: dict, cfg: Any = None) -> None:
    metric = res["metric"]
    t = Table("kind", "layer", f"val {metric}", f"test {metric}", "fit s", title="probe sweep")
    for r in res["rows"]:
        best = res["best"][r["kind"]]["layer"] == r["layer"]
        t.add_row(r["kind"], str(r["layer"]) + (" *" if best else ""), _f(r["val"][metric]), _f(r["test"][metric]),
                  _f(r["fit_seconds"], ".1f"))
    Console().print(t)
    console.print("* best layer per kind, chosen on the validation split")
    best = max(res["best"].items(), key=lambda kv: kv[1]["val"] if kv[1]["val"] is not None else -1)
    console.print(f"Probes for {_asked(cfg)} over layers {res['layers']}: the best is {best[0]} at layer "
                  f"{best[1]['layer']}, test {metric} {_f(best[1]['test'], '.2f')} (picked on validation "
                  f"{metric} {_f(best[1]['val'], '.2f')}); {_verdict(best[1]['test']) if metric == 'auroc' else ''}"
                  .rstrip("; ") + ".", soft_wrap=True)


def _show_shift(res: dict, cfg: Any = None) -> None:
    t = Table("kind", "in-domain auroc", "shifted auroc", "drop", "in-domain acc", "shifted acc", "fit s",
              title=f"shift {res['train_domain']} -> {res['eval_domain']}, layer {res['layer']}")
    for r in res["rows"]:
        t.add_row(r["kind"], _f(r["in_domain"]["auroc"]), _f(r["shifted"]["auroc"]), _f(r["auroc_drop"]),
                  _f(r["in_domain"]["accuracy"]), _f(r["shifted"]["accuracy"]), _f(r["fit_seconds"], ".1f"))
    Console().print(t)
    worst = max(res["rows"], key=lambda r: r["auroc_drop"] if r["auroc_drop"] is not None else -1)
    best = max(res["rows"], key=lambda r: r["shifted"]["auroc"] if r["shifted"]["auroc"] is not None else -1)
    console.print(f"Probes for {_asked(cfg)} trained on {res['train_domain']} and scored on {res['eval_domain']} "
                  f"(layer {res['layer']}): the best shifted AUROC is {best['kind']}'s {_f(best['shifted']['auroc'], '.2f')}; "
                  f"the largest drop is {worst['kind']}'s {_f(worst['auroc_drop'], '.2f')}.", soft_wrap=True)


def _iv(m: dict) -> str:
    return f"{m['auroc']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def _show_negation(res: dict) -> None:
    t = Table("rule", "pool", "test topics aff.", "test topics neg.", "held-out aff.", "held-out neg.", "fit s",
              title=f"truth probes under negation, layer {res['layer']} (AUROC [95% bootstrap])")
    for r in res["rows"]:
        t.add_row(r["rule"], r["pool"], _iv(r["test_topics"]["affirmative"]), _iv(r["test_topics"]["negated"]),
                  _iv(r["heldout_topics"]["affirmative"]), _iv(r["heldout_topics"]["negated"]), _f(r["fit_seconds"], ".1f"))
    Console().print(t)
    console.print(res["summary"])


def _show_regimes(res: dict) -> None:
    s = res["summary"]
    t = Table("method", *s, title=f"mean test AUROC per regime, layer {res['layer']} ({', '.join(res['tasks'])})")
    for m in res["methods"]:
        t.add_row(m, *(_f(s[r]["mean_auroc"][m]) for r in s))
    t.add_row("winner", *(f"{s[r]['winner']} {s[r]['winner_auroc']:.2f} [{s[r]['winner_ci'][0]:.2f}, "
                          f"{s[r]['winner_ci'][1]:.2f}]" for r in s))
    Console().print(t)
    for r, v in s.items():
        if "raw_minus_sae" in v:
            console.print(f"{r}: the best raw probe ({v['best_raw']}) minus the best SAE probe ({v['best_sae']}) = "
                          f"{v['raw_minus_sae']:+.2f} AUROC [{v['raw_minus_sae_ci'][0]:+.2f}, {v['raw_minus_sae_ci'][1]:+.2f}] "
                          "(95% bootstrap)", soft_wrap=True)


def _show_leakage(res: dict, cfg: Any = None) -> None:
    t = Table("kind", "baseline auroc", f"content-filtered ({res['filter']})", "score-filtered",
              title=f"leakage filters, layer {res['layer']} ({res['n_spans']} spans in {res['examples_with_spans']} "
                    f"of {res['n_examples']} texts)")
    for r in res["rows"]:
        t.add_row(r["kind"], _f(r["baseline"]), _f(r["content_filtered"]), _f(r["score_filtered"]))
    Console().print(t)
    console.print(f"Asked whether probes for {_asked(cfg) if cfg is not None else 'the task'} read the label from its "
                  f"words: a classifier of the text alone reaches AUROC {res['text_only_auroc']:.2f}; the score filter "
                  f"dropped {res['score_filter_dropped']} examples (confidence ≥ {res['threshold']:g}).", soft_wrap=True)


def _show_organism(res: dict) -> None:
    b = res["behaviour"]
    t = Table("claims", "organism: agrees", "control: agrees", title=f"{res['organism']} ({res['model']})")
    t.add_row("false", _f(b["agree_false_organism"], ".2f"), _f(b["agree_false_control"], ".2f"))
    t.add_row("true", _f(b["agree_true_organism"], ".2f"), _f(b["agree_true_control"], ".2f"))
    Console().print(t)
    for f, lk in res.get("leakage", {}).items():
        _show_leakage({"layer": res["layer"], **lk})
    console.print(res["verdict"])


def _ci(d: dict | None) -> str:
    return "—" if not d else f"{d['auroc']:.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}]"


def _show_sandbag(res: dict) -> None:
    a = lambda d: f"{d.get('accuracy', d.get('rate')):.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}]"  # noqa: E731
    d = lambda v, ci: f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"  # noqa: E731
    syc = res.get("behaviour_name") == "sycophancy"
    if syc:
        t = Table("organism", "agrees with a wrong claim", "reference", "wrong without a claim", "reference",
                  "rise with − without", "shows",
                  title=f"sycophancy ({res['model']}; share naming the wrong option [95% Wilson])")
        keys = ("organism_wrong_claim", "reference_wrong_claim", "organism_no_claim", "reference_no_claim", "rise_difference")
    else:
        t = Table("organism", "on topic", "reference on topic", "off topic", "reference off topic", "drop on − off",
                  "shows", title=f"sandbagging on {res['topic']} ({res['model']}; accuracy [95% Wilson])")
        keys = ("organism_on_topic", "reference_on_topic", "organism_off_topic", "reference_off_topic", "drop_difference")
    for name, b in res["behaviour"].items():
        t.add_row(name, *(a(b[k]) for k in keys[:4]), d(b[keys[4]], b[keys[4] + "_ci"]), "yes" if b["shows"] else "no")
    Console().print(t)
    if res["boxo"]:
        cols = ("baseline", "content_masked", "content_dropped", "score_filtered", "organism_transfer",
                "organism_transfer_off_topic", "organism_own", "organism_own_off_topic")
        off = res.get("off", "off topic").replace("the ", "")
        t = Table("kind", *(c.replace("_", " ").replace("off topic", off) for c in cols),
                  title=f"probe AUROC [95% bootstrap], layer {res['layer']}")
        for r in res["boxo"]:
            t.add_row(r["kind"], *(_ci(r.get(c)) for c in cols))
        Console().print(t)
    for name, rows in res["monitors"].items():
        t = Table("scorer", "g-mean² (TPR × TNR)", "AUROC", title=f"{name} organism: probes vs text monitors (test split)")
        for r in rows:
            t.add_row(r["scorer"], f"{r['gmean2']:.2f} [{r['gmean2_ci'][0]:.2f}, {r['gmean2_ci'][1]:.2f}]",
                      f"{r['auroc']:.2f} [{r['auroc_ci'][0]:.2f}, {r['auroc_ci'][1]:.2f}]")
        Console().print(t)
    console.print(res["summary"], soft_wrap=True)


def _run_folder(cfg: Any, res: dict) -> str:
    return res["run"]


for _name, _cfg, _show in (("train", TrainConfig, _show_train), ("eval", EvalConfig, _show_eval),
                           ("sweep", SweepConfig, _show_sweep), ("shift", ShiftConfig, _show_shift)):
    config_command(app, _name, _cfg, lazy(f"{__package__}.runner", f"run_{_name}"), show=_show, run_dir=_run_folder,
                   kind=f"probe-{_name}")
config_command(app, "negation", NegationConfig, lazy(f"{__package__}.negation", "run_negation"), show=_show_negation,
               run_dir=_run_folder, kind="probe-negation")
config_command(app, "regimes", RegimesConfig, lazy(f"{__package__}.regimes", "run_regimes"), show=_show_regimes,
               run_dir=_run_folder, kind="probe-regimes")
config_command(app, "leakage", LeakageConfig, lazy(f"{__package__}.leakage", "run_leakage"), show=_show_leakage,
               run_dir=_run_folder, kind="probe-leakage")
config_command(app, "organism", OrganismConfig, lazy(f"{__package__}.organisms", "run_organism"), show=_show_organism,
               run_dir=_run_folder, kind="probe-organism")
config_command(app, "sandbag", SandbagConfig, lazy(f"{__package__}.sandbag", "run_sandbag"), show=_show_sandbag,
               run_dir=_run_folder, kind="probe-sandbag")
