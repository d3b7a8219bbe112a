"""One progress bar for every long job: rich, with rate and ETA; silent when quiet."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

QUIET = os.environ.get("PROBESCOPE_QUIET", "") not in ("", "0")


class Bar:
    """Handle passed to the body of `progress()`: `advance(n)` and `note(**stats)` (shown after the bar)."""

    def __init__(self, prog: Progress | None, task: int | None):
        self._p, self._t = prog, task

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def note(self, **stats: float | str) -> None:
        if self._p is not None:
            txt = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
            self._p.update(self._t, stats=txt)


@contextmanager
def progress(total: float | None, desc: str, unit: str = "it", quiet: bool | None = None) -> Iterator[Bar]:
    """`with progress(n, "caching", unit="tok") as bar: bar.advance(k); bar.note(fvu=0.1)`."""
    if quiet if quiet is not None else QUIET:
        yield Bar(None, None)
        return
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=Console(file=sys.stderr),
        transient=False,
    )
    task = prog.add_task(desc, total=total, stats="", rate="")

    class _Bar(Bar):
        def advance(self, n: float = 1) -> None:
            prog.advance(task, n)
            speed = prog.tasks[0].speed
            if speed:
                prog.update(task, rate=f"{speed:,.0f} {unit}/s")

    with prog:
        yield _Bar(prog, task)
