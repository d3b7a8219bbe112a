"""One progress bar for every long job: rich, with rate and ETA; silent when quiet. Around every job the CLI runner
also keeps a status line (`job_status`: what runs, elapsed seconds) on a terminal, so a job shows something
within a second even before (or between) its bars; a bar takes the screen while it runs."""

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


_STATUS: list = []  # the running job's status line (rich Status), while one is shown


@contextmanager
def job_status(desc: str, quiet: bool | None = None) -> Iterator[None]:
    """A spinner line `desc … 12 s` on stderr while the body runs (only on a terminal, never when quiet); paused
    while a progress bar is shown."""
    console = Console(file=sys.stderr)
    if (quiet if quiet is not None else QUIET) or not console.is_terminal:
        yield
        return
    import time

    t0 = time.monotonic()
    st = console.status(f"[bold]{desc}[/bold] (started)")
    st.start()
    _STATUS.append(st)
    import threading

    stop = threading.Event()

    def tick() -> None:  # elapsed seconds on the line, once a second
        while not stop.wait(1.0):
            st.update(f"[bold]{desc}[/bold] {time.monotonic() - t0:.0f} s")

    th = threading.Thread(target=tick, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        _STATUS.remove(st)
        st.stop()


@contextmanager
def progress(total: float | None, desc: str, unit: str = "it", quiet: bool | None = None) -> Iterator[Bar]:
    """`with progress(n, "caching", unit="tok") as bar: bar.advance(k); bar.note(fvu=0.1)`."""
    if quiet if quiet is not None else QUIET:
        yield Bar(None, None)
        return
    paused = list(_STATUS)
    for st in paused:  # one live display at a time: the bar replaces the job's status line while it runs
        st.stop()
    try:
        with _bar(total, desc, unit) as bar:
            yield bar
    finally:
        for st in paused:
            st.start()


@contextmanager
def _bar(total: float | None, desc: str, unit: str) -> Iterator[Bar]:
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
