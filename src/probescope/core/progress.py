"""One progress bar for every long job: rich, with rate and ETA; silent when quiet. Around every job the CLI runner
also keeps a status line (`job_status`: what runs, elapsed seconds) on a terminal, so a job shows something
within a second even before (or between) its bars; a bar takes the screen while it runs.

Off a terminal (a log file, CI, `nohup`) rich draws nothing until a bar ends, so there a bar writes a plain line
instead — `training: 120/390 (31%)  2.1 step/s  57 s  eta 2 min  fvu 0.21` — once it has run `LOG_SECONDS` (10;
`PROBESCOPE_PROGRESS_SECONDS` sets it) and then every `LOG_SECONDS`, with a last line at its end; a bar that ends
sooner writes nothing."""

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
LOG_SECONDS = float(os.environ.get("PROBESCOPE_PROGRESS_SECONDS", "") or 10)


def stats_text(stats: dict[str, float | str]) -> str:
    """`fvu 0.21  l0 32`: the stats a bar shows after itself (floats to 4 significant digits)."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())


class Bar:
    """Handle passed to the body of `progress()`: `advance(n)` and `note(**stats)` (shown after the bar)."""

    def __init__(self, prog: Progress | None, task: int | None):
        self._p, self._t = prog, task

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def note(self, **stats: float | str) -> None:
        if self._p is not None:
            self._p.update(self._t, stats=stats_text(stats))


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


def _eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _LogBar(Bar):
    """A bar off a terminal: a plain line on stderr every `every` seconds once the bar has run that long."""

    def __init__(self, total: float | None, desc: str, unit: str, every: float):
        import time

        super().__init__(None, None)
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.stats, self._clock = 0.0, "", time.monotonic
        self.t0 = self.last = self._clock()
        self.printed = False

    def line(self) -> str:
        dt = self._clock() - self.t0
        done = f"{self.n:g}/{self.total:g} ({self.n / self.total:.0%})" if self.total else f"{self.n:g}"
        rate = self.n / dt if dt > 0 else 0.0
        eta = (f"  eta {_eta((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total
               else "")
        return f"{self.desc}: {done}  {rate:,.3g} {self.unit}/s  {_eta(dt)}{eta}" + (f"  {self.stats}" if self.stats
                                                                                   else "")

    def _maybe(self) -> None:
        now = self._clock()
        if now - self.last >= self.every:
            self.last, self.printed = now, True
            print(self.line(), file=sys.stderr, flush=True)

    def advance(self, n: float = 1) -> None:
        self.n += n
        self._maybe()

    def note(self, **stats: float | str) -> None:
        self.stats = stats_text(stats)

    def close(self) -> None:
        if self.printed:
            print(self.line(), file=sys.stderr, flush=True)


@contextmanager
def _bar(total: float | None, desc: str, unit: str) -> Iterator[Bar]:
    if not Console(file=sys.stderr).is_terminal:
        bar = _LogBar(total, desc, unit, LOG_SECONDS)
        try:
            yield bar
        finally:
            bar.close()
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
