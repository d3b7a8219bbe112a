"""The `probescope` command: thin over the Python API."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .clikit import JSON, QUIET, finish, job_output, run_job as _run

app = typer.Typer(help="probescope: read a language model's activations and put them to work.", no_args_is_help=True)
console = Console(stderr=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show the full traceback of any error (or set "
                                                              "PROBESCOPE_DEBUG=1)")) -> None:
    """probescope: read a language model's activations and put them to work."""
    if debug:
        import os

        from .clikit import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"


@app.command("models")
def models_cmd(
    warm: list[str] = typer.Option(None, "--warm", help="load these names once, so the dequantized cache exists"),
) -> None:
    """List the built-in model names (and build their caches with --warm)."""
    from .core.models.registry import list_models, load_model

    table = Table("name", "what")
    for name, desc in list_models().items():
        table.add_row(name, desc)
    Console().print(table)
    for name in warm or []:
        load_model(name)
        console.print(f"[green]cached[/green] {name}")


from .store.cli import register as _store_register; _store_register(app)  # noqa: E402, E702  (cache, store verify)


@app.command("demo")
def demo_cmd(
    model: str = typer.Option("smollm2-135m", "--model"),
    out: str = typer.Option("runs/demo", "--out"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """The main job on the embedded default model."""
    from .demo import run_demo

    with job_output(quiet, json_out):
        res = _run(lambda: run_demo(model=model, out=out, quiet=quiet or json_out))
    finish(out, res if isinstance(res, dict) else {}, True, json_out)  # the demo prints its own table


@app.command("report")
def report_cmd(
    run: str = typer.Argument(..., help="a run folder, e.g. runs/demo"),
    screenshot: bool = typer.Option(False, "--screenshot", help="also open it in headless Chromium and save report.png"),
) -> None:
    """Render RUN/report.html: one self-contained page with the run's tables and plots."""
    from .report import render_report

    page = _run(lambda: render_report(run))
    console.print(f"[green]report[/green] {page}")
    if screenshot:
        from .report.browser import check_page

        res = _run(lambda: check_page(page, screenshot=page.with_name("report.png")))
        console.print(f"figures drawn {res.figures_ok}/{res.figures}, script errors {res.errors}; screenshot {res.screenshot}")


from .finetune.cli import register as _train_register; _train_register(app)  # noqa: E402, E702  (train)
from .probes.cli import app as _probe_app  # noqa: E402

app.add_typer(_probe_app, name="probe")


from .sae.cli import app as _sae_app; app.add_typer(_sae_app, name="sae")  # noqa: E402, E702
from .steering.cli import app as _steer_app; app.add_typer(_steer_app, name="steer")  # noqa: E402, E702
from .exit.cli import app as _exit_app; app.add_typer(_exit_app, name="exit")  # noqa: E402, E702
from .unlearn.cli import app as _unlearn_app; app.add_typer(_unlearn_app, name="unlearn")  # noqa: E402, E702
from .curvature.cli import app as _curv_app; app.add_typer(_curv_app, name="curvature")  # noqa: E402, E702
from .circuits.cli import app as _circuit_app; app.add_typer(_circuit_app, name="circuit")  # noqa: E402, E702
from .manifolds.cli import app as _manifold_app; app.add_typer(_manifold_app, name="manifold")  # noqa: E402, E702
from .tasks.cli import app as _data_app; app.add_typer(_data_app, name="data")  # noqa: E402, E702
from .patching.cli import register as _patch_register; _patch_register(app)  # noqa: E402, E702



def main() -> None:
    app()


if __name__ == "__main__":
    main()
