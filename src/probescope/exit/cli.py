"""`probescope exit ...`: collect, train, calibrate, eval, run (live)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..clikit import JSON, QUIET, finish, job_output, parse_layers as _layers, run_job as _run
from ..core.threads import torch_threads

app = typer.Typer(help="Early exit of chain-of-thought: stop reasoning once a probe is sure of the final answer.",
                  no_args_is_help=True)
console = Console(stderr=True)


def _check_out(out: str, kind: str, overwrite: bool) -> None:
    """Refuse an --out holding another kind of run before any work (the rule every job follows)."""
    from ..report.runs import allow_overwrite_at, check_out

    if overwrite:
        allow_overwrite_at(out)

    _run(lambda: check_out(out, kind, overwrite))


def _threads(n: int):
    return torch_threads(n if n > 0 else None)


@app.command("collect")
def collect_cmd(
    model: str = typer.Option("smollm2-135m-reasoner", "--model"),
    out: str = typer.Option("runs/exit-collect", "--out"),
    n_train: int = typer.Option(160, "--n-train"), n_val: int = typer.Option(100, "--n-val"),
    n_test: int = typer.Option(50, "--n-test"), seed: int = typer.Option(0, "--seed"),
    layers: str = typer.Option("", "--layers", help="candidate probe layers, e.g. 10,15,20 (default: four spread)"),
    stride: int = typer.Option(4, "--stride", help="forced-answer curve every N tokens (plus every newline)"),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens"), batch_size: int = typer.Option(16, "--batch-size"),
    shots: int = typer.Option(1, "--shots", help="few-shot examples for models without a chat template"),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest on a busy few-core machine; 0: leave)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Full greedy reasoning on generated problems; activations at candidate layers, answers, forced-answer curves."""
    from ..core.io import read_json
    from .collect import CollectConfig, run_collect

    cfg = CollectConfig(model, out, n_train, n_val, n_test, seed, _layers(layers), stride, max_new_tokens, batch_size, shots)
    _check_out(out, "exit-collect", overwrite)
    with _threads(threads), job_output(quiet, json_out):
        path = _run(lambda: run_collect(cfg, quiet=quiet or json_out))
    m = read_json(Path(path) / "metrics.json")
    finish(path, m, quiet, json_out, show=lambda: console.print(
        f"[green]collected[/green] {path}: " + ", ".join(
            f"{k} {v['n']} (accuracy {v['accuracy']:.2f}, {v['mean_reasoning_tokens']:.0f} tokens)"
            for k, v in m["splits"].items())))


@app.command("train")
def train_cmd(
    collect: str = typer.Option("runs/exit-collect", "--collect"), out: str = typer.Option("runs/exit-probe", "--out"),
    layers: str = typer.Option("", "--layers", help="candidate layers (default: every collected one)"),
    cuts_per_seq: int = typer.Option(4, "--cuts-per-seq"), n_heads: int = typer.Option(4, "--n-heads"),
    max_epochs: int = typer.Option(30, "--max-epochs"), seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Attention probe on random reasoning prefixes -> the model's own final answer; layer chosen on val."""
    from ..core.io import read_json
    from .train import TrainConfig, run_train

    cfg = TrainConfig(collect=collect, out=out, layers=_layers(layers), cuts_per_seq=cuts_per_seq, n_heads=n_heads,
                      max_epochs=max_epochs, seed=seed)
    _check_out(out, "exit-probe", overwrite)
    with job_output(quiet, json_out):
        path = _run(lambda: run_train(cfg, quiet=quiet or json_out))
    info = read_json(Path(path) / "layers.json")
    finish(path, info, quiet, json_out, show=lambda: console.print(
        f"[green]probe[/green] {path}: layer {info['chosen']}; val "
        + ", ".join(f"L{k} nll {v['val_nll']:.3f}" for k, v in info["scores"].items())))


@app.command("calibrate")
def calibrate_cmd(
    collect: str = typer.Option("runs/exit-collect", "--collect"), probe: str = typer.Option("runs/exit-probe", "--probe"),
    target: float = typer.Option(0.99, "--target", help="agreement with full reasoning to keep (1 - budget)"),
    rule: str = typer.Option("crc", "--rule", help="crc | ucb | empirical (see docs/early_exit.md)"),
    delta: float = typer.Option(0.05, "--delta"), consecutive: int = typer.Option(1, "--consecutive"),
    min_tokens: int = typer.Option(0, "--min-tokens"),
    mode: str = typer.Option("probe", "--mode", help="answer at the exit: probe (its own prediction) | forced"),
    out: str = typer.Option("", "--out", help="JSON path (default: PROBE/calibration.json)"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Pick τ on the val split (never the test split): the smallest τ meeting the agreement target."""
    from ..core.io import atomic_write_json
    from ..probes.base import load_probe
    from .calibrate import calibrate
    from .collect import load_collected
    from .evaluate import probe_traces

    def go():
        col = load_collected(collect)
        p = load_probe(probe)
        cal = calibrate(probe_traces(col, col.split("val"), p, mode), target, rule, delta, consecutive, min_tokens)
        d = {**cal.to_dict(), "consecutive": consecutive, "min_tokens": min_tokens, "mode": mode}
        atomic_write_json(out or Path(probe) / "calibration.json", d)
        return d

    d = _run(go)
    # the probe's folder is its run folder: its page shows the calibration next to the layer choice
    finish(probe if Path(probe).is_dir() else None, d, quiet, json_out, show=lambda: console.print(
        f"[green]τ[/green] = {d['tau']} ({d['rule']}, target agreement {target}): val agreement "
        f"{d['val_agreement']:.3f}, val tokens saved {d['val_tokens_saved']:.3f}" + (f"; {d['note']}" if d.get("note") else "")))


@app.command("eval")
def eval_cmd(
    collect: str = typer.Option("runs/exit-collect", "--collect"), probe: str = typer.Option("runs/exit-probe", "--probe"),
    out: str = typer.Option("runs/exit-eval", "--out"), target: float = typer.Option(0.99, "--target"),
    rule: str = typer.Option("crc", "--rule"), consecutive: int = typer.Option(1, "--consecutive"),
    min_tokens: int = typer.Option(0, "--min-tokens"),
    mode: str = typer.Option("probe", "--mode", help="answer at the exit: probe (its own prediction) | forced"),
    live: bool = typer.Option(True, "--live/--no-live", help="time live runs (full vs early exit)"),
    n_live: int = typer.Option(0, "--n-live"), batch_size: int = typer.Option(16, "--batch-size"),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens"), threads: int = typer.Option(1, "--threads"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Every method on the test split at the τ calibrated on val: Pareto curves, table, report page."""
    from .evaluate import EvalConfig, run_eval

    cfg = EvalConfig(collect, probe, out, target, rule, 0.05, consecutive, min_tokens, mode, live, n_live, batch_size,
                     max_new_tokens)
    _check_out(out, "exit", overwrite)
    with _threads(threads), job_output(quiet, json_out):
        m = _run(lambda: run_eval(cfg, quiet=quiet or json_out))
    finish(out, m, quiet, json_out, show=lambda: print_table(m, Console()))


def print_table(m: dict, con: Console) -> None:
    from rich.table import Table

    t = Table(title=f"{m['model']}: early exit at the calibrated τ ({m['n_test']} test problems)")
    for c in ("method", "tokens saved", "wall-clock saved", "agreement", "accuracy", "probe overhead", "oracle frac."):
        t.add_column(c)
    for name, r in m["methods"].items():
        f = (lambda v: "" if v is None else f"{v:.3f}")
        t.add_row(name, f(r["tokens_saved"]), f(r["wallclock_saved"]) + (" est." if r.get("wallclock_estimated") else ""),
                  f(r["agreement"]), f(r["accuracy"]), f(r["probe_overhead"]), f(r["oracle_fraction"]))
    con.print(t)


@app.command("run")
def run_cmd(
    question: str = typer.Argument(..., help="the problem text with its options, e.g. '... (A) 3 (B) 4 (C) 5 (D) 6'"),
    model: str = typer.Option("smollm2-135m-reasoner", "--model"),
    probe: str = typer.Option("", "--probe", help="probe folder/file (default: the shipped one for this model)"),
    tau: float = typer.Option(-1.0, "--tau", help="threshold (default: the probe's calibration.json, else 0.9)"),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens"), threads: int = typer.Option(1, "--threads"),
    out: str = typer.Option("runs/exit-run", "--out", help="run folder: the trace, the belief plot, report.html"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Show one reasoning live, token by token: the text, the probe's belief per option, where it stopped."""
    from .live import live_run

    m = _run(lambda: live_run(question, model, probe, tau, max_new_tokens, threads, out, live=not (quiet or json_out)))
    finish(out, m, True, json_out)  # the live view already showed it
