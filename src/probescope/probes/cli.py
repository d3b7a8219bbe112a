"""`probescope probe train | eval | sweep | shift | tasks`: parse options into config dataclasses, run, print tables."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..clikit import JSON, QUIET, finish, job_output, run_job

app = typer.Typer(help="Train and evaluate probes on a model's activations.", no_args_is_help=True)
console = Console(stderr=True)

_MODEL = typer.Option("smollm2-135m", "--model", "-m", help="built-in model name or local path")
_TASK = typer.Option("truth", "--task", "-t", help="built-in task (truth, sentiment, topic)")
_DATA = typer.Option(None, "--data", help="dataset file (.jsonl/.csv with text,label[,domain,split]) or hf:NAME")
_N = typer.Option(200, "--n", help="examples per domain for a built-in task")
_MAXLEN = typer.Option(64, "--max-length", help="truncate texts to this many tokens")
_SEED = typer.Option(0, "--seed")
_WD = typer.Option(None, "--weight-decay", help="fixed weight decay (default: chosen by stratified 3-fold CV)")
_EPOCHS = typer.Option(100, "--max-epochs", help="AdamW epochs at most (early stopping on validation loss)")
_OUT = typer.Option(None, "--out", "-o", help="run folder (default runs/probe-<cmd>-<time>)")
_SAE = typer.Option(None, "--sae", help="SAE for the sparse kind (read by probescope.sae.load_sae)")
_OVERWRITE = typer.Option(False, "--overwrite", help="replace what --out holds (another kind of run, or other settings)")


def _data(model: str, task: str, data: Optional[str], n: int, max_length: int, seed: int):
    from .config import DataConfig

    return DataConfig(model=model, task=None if data else task, data=data, n_per_domain=n, max_length=max_length, seed=seed)


def _fit(wd: Optional[float], epochs: int):
    from .config import FitOptions

    return FitOptions(weight_decay=wd, max_epochs=epochs)


def _ints(s: Optional[str]) -> Optional[list[int]]:
    if not s or s == "all":
        return None
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{s!r}: give layers as a comma-separated list of integers, or 'all'")


def _list(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _run(fn, cfg, quiet: bool = False, json_out: bool = False, overwrite: bool = False):
    """Run a job through the CLI's one error handler (`clikit.run_job`); `--overwrite` lets it replace --out."""
    from ..report.runs import overwrite_allowed

    def job():
        with job_output(quiet, json_out):
            if overwrite_allowed(overwrite):
                import os

                old = os.environ.get("PROBESCOPE_OVERWRITE")
                os.environ["PROBESCOPE_OVERWRITE"] = "1"
                try:
                    return fn(cfg)
                finally:
                    if old is None:
                        os.environ.pop("PROBESCOPE_OVERWRITE", None)
                    else:
                        os.environ["PROBESCOPE_OVERWRITE"] = old
            return fn(cfg)

    return run_job(job)


@app.command("tasks")
def tasks_cmd() -> None:
    """List the built-in probe tasks."""
    from .tasks import list_tasks

    t = Table("task", "what")
    for k, v in list_tasks().items():
        t.add_row(k, v)
    Console().print(t)


@app.command("train")
def train_cmd(
    model: str = _MODEL, task: str = _TASK, data: Optional[str] = _DATA, n: int = _N, max_length: int = _MAXLEN,
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="layer (default: the middle one)"),
    kind: str = typer.Option("linear", "--kind", "-k", help="linear[-mean|-last|-max], attention, mlp[-pool], sparse[-pool]"),
    domain: Optional[str] = typer.Option(None, "--domain", help="train and score on this domain only"),
    weight_decay: Optional[float] = _WD, max_epochs: int = _EPOCHS, seed: int = _SEED, sae: Optional[str] = _SAE,
    out: Optional[str] = _OUT, quiet: bool = QUIET, json_out: bool = JSON, overwrite: bool = _OVERWRITE,
) -> None:
    """Train one probe; writes config.json, metrics.json and probe/ (safetensors + JSON)."""
    from .config import TrainConfig
    from .runner import run_train

    cfg = TrainConfig(_data(model, task, data, n, max_length, seed), _fit(weight_decay, max_epochs), layer, kind, domain, sae, out)
    res = _run(run_train, cfg, quiet, json_out, overwrite)

    def show() -> None:
        t = Table("split", "accuracy", "auroc", "f1", "ece", "recall@1%fpr", title=f"{kind} probe, layer {res['layer']}")
        for split in ("val", "test"):
            m = res[split]
            t.add_row(split, *(_f(m.get(k)) for k in ("accuracy", "auroc", "f1", "ece", "recall_at_0.01_fpr")))
        Console().print(t)

    finish(res["run"], res, quiet, json_out, show)


@app.command("eval")
def eval_cmd(
    probe: str = typer.Option(..., "--probe", "-p", help="probe folder (or a run folder containing probe/)"),
    model: str = _MODEL, task: str = _TASK, data: Optional[str] = _DATA, n: int = _N, max_length: int = _MAXLEN,
    split: str = typer.Option("test", "--split"), domain: Optional[str] = typer.Option(None, "--domain"),
    seed: int = _SEED, sae: Optional[str] = _SAE, out: Optional[str] = _OUT, quiet: bool = QUIET, json_out: bool = JSON,
    overwrite: bool = _OVERWRITE,
) -> None:
    """Score a saved probe on a split / domain of a dataset."""
    from pathlib import Path

    from .config import EvalConfig
    from .runner import run_eval

    p = Path(probe)
    if (p / "probe" / "probe.json").exists():
        probe = str(p / "probe")
    res = _run(run_eval, EvalConfig(probe, _data(model, task, data, n, max_length, seed), split, domain, sae, out),
               quiet, json_out, overwrite)

    def show() -> None:
        t = Table("metric", "value", title=f"{res['kind']} probe, layer {res['layer']}, {split}")
        for k, v in res["metrics"].items():
            t.add_row(k, _f(v))
        Console().print(t)

    finish(res["run"], res, quiet, json_out, show)


@app.command("sweep")
def sweep_cmd(
    model: str = _MODEL, task: str = _TASK, data: Optional[str] = _DATA, n: int = _N, max_length: int = _MAXLEN,
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: all)"),
    kinds: str = typer.Option("linear,attention", "--kinds", help="comma-separated kinds"),
    metric: str = typer.Option("auroc", "--metric", help="auroc, accuracy, f1"),
    domain: Optional[str] = typer.Option(None, "--domain"),
    weight_decay: Optional[float] = _WD, max_epochs: int = _EPOCHS, seed: int = _SEED, sae: Optional[str] = _SAE,
    out: Optional[str] = _OUT, quiet: bool = QUIET, json_out: bool = JSON, overwrite: bool = _OVERWRITE,
) -> None:
    """Every layer x every kind: a table, metrics.json (series by layer) and sweep.svg; best layer on validation."""
    from .config import SweepConfig
    from .runner import run_sweep

    cfg = SweepConfig(_data(model, task, data, n, max_length, seed), _fit(weight_decay, max_epochs), _ints(layers),
                      _list(kinds), metric, domain, sae, out)
    res = _run(run_sweep, cfg, quiet, json_out, overwrite)

    def show() -> None:
        t = Table("kind", "layer", f"val {metric}", f"test {metric}", "fit s", title="probe sweep")
        for r in res["rows"]:
            best = res["best"][r["kind"]]["layer"] == r["layer"]
            t.add_row(r["kind"], str(r["layer"]) + (" *" if best else ""), _f(r["val"][metric]), _f(r["test"][metric]),
                      _f(r["fit_seconds"]))
        Console().print(t)
        console.print("* best layer per kind, chosen on the validation split")

    finish(res["run"], res, quiet, json_out, show)


@app.command("shift")
def shift_cmd(
    model: str = _MODEL, task: str = _TASK, data: Optional[str] = _DATA, n: int = _N, max_length: int = _MAXLEN,
    layer: Optional[int] = typer.Option(None, "--layer", "-l"),
    kinds: str = typer.Option("linear-mean,linear-last,linear-max,attention,mlp", "--kinds"),
    train_domain: Optional[str] = typer.Option(None, "--train-domain", help="domain A (default: the task's)"),
    eval_domain: Optional[str] = typer.Option(None, "--eval-domain", help="domain B (default: the task's)"),
    weight_decay: Optional[float] = _WD, max_epochs: int = _EPOCHS, seed: int = _SEED, sae: Optional[str] = _SAE,
    out: Optional[str] = _OUT, quiet: bool = QUIET, json_out: bool = JSON, overwrite: bool = _OVERWRITE,
) -> None:
    """Train on domain A, score in-domain and on domain B, for every kind, in one table."""
    from .config import ShiftConfig
    from .runner import run_shift

    cfg = ShiftConfig(_data(model, task, data, n, max_length, seed), _fit(weight_decay, max_epochs), layer, _list(kinds),
                      train_domain, eval_domain, sae, out)
    res = _run(run_shift, cfg, quiet, json_out, overwrite)

    def show() -> None:
        t = Table("kind", "in-domain auroc", "shifted auroc", "drop", "in-domain acc", "shifted acc", "fit s",
                  title=f"shift {res['train_domain']} -> {res['eval_domain']}, layer {res['layer']}")
        for r in res["rows"]:
            t.add_row(r["kind"], _f(r["in_domain"]["auroc"]), _f(r["shifted"]["auroc"]), _f(r["auroc_drop"]),
                      _f(r["in_domain"]["accuracy"]), _f(r["shifted"]["accuracy"]), _f(r["fit_seconds"]))
        Console().print(t)

    finish(res["run"], res, quiet, json_out, show)
