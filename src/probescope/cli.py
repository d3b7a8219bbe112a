"""The `probescope` command: thin over the Python API."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="probescope: read a language model's activations and put them to work.", no_args_is_help=True)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """probescope: read a language model's activations and put them to work."""


@app.command("models")
def models_cmd(
    warm: list[str] = typer.Option(None, "--warm", help="load these names once, so the dequantized cache exists"),
) -> None:
    """List the built-in model names (and build their caches with --warm)."""
    from .models import list_models, load_model

    table = Table("name", "what")
    for name, desc in list_models().items():
        table.add_row(name, desc)
    Console().print(table)
    for name in warm or []:
        load_model(name)
        console.print(f"[green]cached[/green] {name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
