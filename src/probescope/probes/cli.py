"""`probescope probe train | eval | sweep | shift | tasks`: the options are the config dataclasses' fields
(`clikit.config_command`); each command calls one `run_*` of the wing and prints its table."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..clikit import config_command, lazy
from .config import EvalConfig, ShiftConfig, SweepConfig, TrainConfig

app = typer.Typer(help="Train and evaluate probes on a model's activations.", no_args_is_help=True)
console = Console(stderr=True)


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@app.command("tasks")
def tasks_cmd() -> None:
    """List the built-in probe tasks."""
    from .tasks import list_tasks

    t = Table("task", "what")
    for k, v in list_tasks().items():
        t.add_row(k, v)
    Console().print(t)


def _show_train(res: dict) -> None:
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


def _show_eval(res: dict) -> None:
    t = Table("metric", "value", title=f"{res['kind']} probe, layer {res['layer']}, {res['split']}")
    for k, v in res["metrics"].items():
        t.add_row(k, _f(v))
    Console().print(t)


def _show_sweep(res: dict) -> None:
    metric = res["metric"]
    t = Table("kind", "layer", f"val {metric}", f"test {metric}", "fit s", title="probe sweep")
    for r in res["rows"]:
        best = res["best"][r["kind"]]["layer"] == r["layer"]
        t.add_row(r["kind"], str(r["layer"]) + (" *" if best else ""), _f(r["val"][metric]), _f(r["test"][metric]),
                  _f(r["fit_seconds"]))
    Console().print(t)
    console.print("* best layer per kind, chosen on the validation split")


def _show_shift(res: dict) -> None:
    t = Table("kind", "in-domain auroc", "shifted auroc", "drop", "in-domain acc", "shifted acc", "fit s",
              title=f"shift {res['train_domain']} -> {res['eval_domain']}, layer {res['layer']}")
    for r in res["rows"]:
        t.add_row(r["kind"], _f(r["in_domain"]["auroc"]), _f(r["shifted"]["auroc"]), _f(r["auroc_drop"]),
                  _f(r["in_domain"]["accuracy"]), _f(r["shifted"]["accuracy"]), _f(r["fit_seconds"]))
    Console().print(t)


def _run_folder(cfg: Any, res: dict) -> str:
    return res["run"]


for _name, _cfg, _show in (("train", TrainConfig, _show_train), ("eval", EvalConfig, _show_eval),
                           ("sweep", SweepConfig, _show_sweep), ("shift", ShiftConfig, _show_shift)):
    config_command(app, _name, _cfg, lazy(f"{__package__}.runner", f"run_{_name}"), show=_show, run_dir=_run_folder,
                   kind=f"probe-{_name}")
