"""`probescope data list | show`: the options are ListConfig's and ShowConfig's fields (`clikit.config_command`)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..clikit import config_command
from .show import ListConfig, ShowConfig, run_list, run_show

app = typer.Typer(help="The generated data sets: list them, print a few records.", no_args_is_help=True)


def _show_list(res: dict) -> None:
    t = Table("name", "what", "a record", "options")
    for s in res["sets"]:
        t.add_row(s["name"], s["description"], s["record"], ", ".join(f"{k}={v}" for k, v in s["options"].items()))
    Console().print(t)


def _show_records(res: dict) -> None:
    for r in res["records"]:
        print(json.dumps(r, ensure_ascii=False))


config_command(app, "list", ListConfig, run_list, show=_show_list)
config_command(app, "show", ShowConfig, run_show, show=_show_records)
