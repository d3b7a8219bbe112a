"""What every job command shares: `--quiet` / `--json` options and the end of a job (report page, JSON, table).

A job command looks like:

    def cmd(..., quiet: bool = QUIET, json_out: bool = JSON):
        with job_output(quiet, json_out):
            res = run(...)                 # progress bars follow --quiet / --json
        finish(run_dir, res, quiet, json_out, show=lambda: print_table(res))
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console

from .core import progress

QUIET = typer.Option(False, "--quiet", help="no progress bars and no tables (the run folder is written all the same)")
JSON = typer.Option(False, "--json", help="print the job's results as one JSON object on stdout (no bars or tables)")

console = Console(stderr=True)


@contextmanager
def job_output(quiet: bool, json_out: bool) -> Iterator[None]:
    """Silence every progress bar inside the block when `--quiet` or `--json` is given."""
    before = progress.QUIET
    progress.QUIET = before or quiet or json_out
    try:
        yield
    finally:
        progress.QUIET = before


def _plain(v: Any) -> Any:
    """JSON-safe copy: paths as strings, NaN/inf as null, tensors and arrays as lists."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "tolist"):
        return _plain(v.tolist())
    return v


def finish(run: str | Path | None, result: Any, quiet: bool, json_out: bool,
           show: Callable[[], None] | None = None) -> Path | None:
    """End a job: render RUN/report.html, then print `result` as JSON (`--json`) or the table (`show`)."""
    from .report.runs import render_quietly

    page = None
    if run is not None and Path(run).is_dir():
        page = render_quietly(Path(run))
    if json_out:
        out = _plain(result) if isinstance(result, dict) else {"result": _plain(result)}
        if run is not None:
            out = {"run_dir": str(run), **out}
        if page is not None:
            out["report"] = str(page)
        print(json.dumps(out))
    elif not quiet:
        if show is not None:
            show()
        if page is not None:
            console.print(f"[green]report[/green] {page}")
    return page
