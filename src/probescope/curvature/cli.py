"""`probescope curvature organism | fit | edit | eval`: thin over probescope.curvature.runner."""

from __future__ import annotations

import typer
from rich.console import Console

from ..clikit import JSON, QUIET, finish, job_output
from . import report as _report  # noqa: F401  (registers the report sections)

app = typer.Typer(help="Loss-curvature (K-FAC) edits that remove memorizing weights.", no_args_is_help=True)
console = Console(stderr=True)


def _fail(fn):
    try:
        return fn()
    except (ValueError, FileNotFoundError, FileExistsError, ModuleNotFoundError, TypeError, KeyError,
            FloatingPointError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


OVERWRITE = typer.Option(False, "--overwrite", help="replace a run with other settings (or of another kind) at --out")


def _allow(out: str, overwrite: bool) -> None:
    if overwrite:
        from ..report.runs import allow_overwrite_at

        allow_overwrite_at(out)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"'{text}' must be comma-separated numbers, e.g. 0.9,0.8,0.5") from None


@app.command("organism")
def organism_cmd(
    out: str = typer.Option("runs/curvature/organism", "--out", help="run folder (a finished one with the same config is reused)"),
    model: str = typer.Option("smollm2-135m", "--model"),
    n_canaries: int = typer.Option(64, "--n-canaries"),
    prefix_tokens: int = typer.Option(8, "--prefix-tokens"),
    suffix_tokens: int = typer.Option(24, "--suffix-tokens"),
    layers: str = typer.Option("-8--1", "--layers", help="blocks whose MLPs are trained, e.g. 22-29 or -8--1"),
    matrices: str = typer.Option("up,gate,down", "--matrices"),
    steps: int = typer.Option(50, "--steps"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Train the memorization organism: random canaries + arithmetic into the chosen MLPs; score recall and skill."""
    from .organism import OrganismConfig
    from .runner import run_organism

    cfg = OrganismConfig(model=model, n_canaries=n_canaries, prefix_tokens=prefix_tokens, suffix_tokens=suffix_tokens,
                         layers=layers, matrices=matrices, steps=steps, lr=lr, seed=seed, threads=threads)
    _allow(out, overwrite)
    with job_output(quiet, json_out):
        m = _fail(lambda: run_organism(cfg, out, quiet=quiet or json_out))
    finish(out, m, quiet, json_out, show=lambda: console.print(
        f"[green]organism[/green] canary recall {m['base']['recall']:.2f} → {m['organism']['recall']:.2f}, "
        f"skill {m['base']['skill']:.2f} → {m['organism']['skill']:.2f}, ppl {m['base']['ppl']:.2f} → {m['organism']['ppl']:.2f}"))


@app.command("fit")
def fit_cmd(
    out: str = typer.Option("runs/curvature/fit", "--out", help="run folder; its factors/ resume after a kill"),
    model: str = typer.Option("smollm2-135m", "--model"),
    organism: str = typer.Option(None, "--organism", help="fit on an organism folder's fine-tuned model"),
    layers: str = typer.Option("-8--1", "--layers"),
    matrices: str = typer.Option("up,gate,down", "--matrices", help="up,gate,down (or child names)"),
    data: str = typer.Option(None, "--data", help="JSONL/CSV/TXT; default: the project's corpus minus its held-out tenth"),
    fisher: str = typer.Option("empirical", "--fisher", help="empirical (true labels) | true (labels sampled from the model)"),
    context_len: int = typer.Option(128, "--context-len"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_tokens: int = typer.Option(32768, "--max-tokens"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Collect K-FAC factors (A of inputs, G of output gradients) for MLP matrices; the page shows their spectra."""
    from .runner import FitConfig, run_fit

    cfg = FitConfig(out=out, model=model, organism=organism, layers=layers, matrices=matrices, data=data, fisher=fisher,
                    context_len=context_len, batch_size=batch_size, max_tokens=max_tokens, seed=seed, threads=threads)
    _allow(out, overwrite)
    with job_output(quiet, json_out):
        m = _fail(lambda: run_fit(cfg, quiet=quiet or json_out))
    finish(out, m, quiet, json_out, show=lambda: console.print(
        f"[green]factors[/green] {m['factors']}: {len(m['matrices'])} matrices, {m['n_tokens']:,} tokens, "
        f"{m['fisher']} Fisher, {m['factor_bytes'] / 2**20:.1f} MiB"))


@app.command("edit")
def edit_cmd(
    factors: str = typer.Option(..., "--factors", help="a factors folder (from `curvature fit`)"),
    out: str = typer.Option("runs/curvature/edit", "--out"),
    model: str = typer.Option("smollm2-135m", "--model"),
    organism: str = typer.Option(None, "--organism"),
    method: str = typer.Option("kfac", "--method", help="kfac | random | magnitude | svd"),
    keep: float = typer.Option(0.8, "--keep", help="share of curvature mass kept per matrix, in (0, 1]"),
    top_k: int = typer.Option(None, "--top-k", help="keep this many components per matrix instead of --keep"),
    seed: int = typer.Option(0, "--seed"),
    allow_other_model: bool = typer.Option(False, "--allow-other-model", help="factors of another model id, same widths"),
    threads: int = typer.Option(1, "--threads"),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Plan an edit from factors and save it as a delta (edit/delta.safetensors + edit.json)."""
    from .runner import EditConfig, run_edit

    cfg = EditConfig(factors=factors, out=out, model=model, organism=organism, method=method, keep=keep, top_k=top_k,
                     seed=seed, allow_other_model=allow_other_model, threads=threads)
    _allow(out, overwrite)
    with job_output(quiet, json_out):
        m = _fail(lambda: run_edit(cfg, quiet=quiet or json_out))
    finish(out, m, quiet, json_out, show=lambda: console.print(
        f"[green]edit[/green] {m['edit']}: {m['method']}, {m['kept_share_params']:.1%} of the components kept"))


@app.command("eval")
def eval_cmd(
    organism: str = typer.Option("runs/curvature/organism", "--organism"),
    factors: list[str] = typer.Option(..., "--factors", help="factors folder(s): the first drives the edit"),
    out: str = typer.Option("runs/curvature/eval", "--out"),
    keeps: str = typer.Option("0.999,0.995,0.99,0.95,0.8", "--keeps"),
    methods: str = typer.Option("kfac,random,magnitude,svd", "--methods", help="kfac,random,magnitude,svd (kfac:true for the 2nd factors)"),
    n_text_windows: int = typer.Option(24, "--text-windows", help="128-token held-out windows for perplexity"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """The edit sweep on an organism: recall, perplexity and skill for the curvature edit and its baselines."""
    from .runner import EvalConfig, run_eval

    cfg = EvalConfig(organism=organism, factors=list(factors), out=out, keeps=_floats(keeps),
                     methods=[m.strip() for m in methods.split(",") if m.strip()], n_text_windows=n_text_windows,
                     seed=seed, threads=threads)
    _allow(out, overwrite)
    with job_output(quiet, json_out):
        m = _fail(lambda: run_eval(cfg, quiet=quiet or json_out))

    def show() -> None:
        b = m["base"]
        console.print(f"organism: recall {b['recall']:.2f}, ppl {b['ppl']:.2f}, skill {b['skill']:.2f}")
        for r in m["rows"]:
            console.print(f"{r['method']:>10} keep {r['keep']:.2f}: recall {r['recall']:.2f}, ppl {r['ppl']:.2f}, "
                          f"skill {r['skill']:.2f}")

    finish(out, m, quiet, json_out, show=show)
