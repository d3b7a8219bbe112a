"""Run folders: every job writes config, metrics and artifacts under one folder (default `runs/<name>/`)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from ..core.io import atomic_write_json, read_json


def render_quietly(path: Path) -> Path | None:
    """Render the run's report page; a failure is reported on stderr, never losing the job's results."""
    from . import render_report

    try:
        return render_report(path)
    except Exception as e:  # the metrics are already on disk: a page that fails to draw must not fail the job
        print(f"probescope: could not render {path}/report.html: {e}", file=sys.stderr)
        return None


class RunDir:
    """A run folder: `config.json`, `metrics.json`, artifacts; `report.html` is rendered from it."""

    def __init__(self, path: str | Path, kind: str | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if kind is not None:
            meta = {"kind": kind, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_json(self.path / "run.json", meta)

    @classmethod
    def new(cls, name: str, kind: str, root: str | Path = "runs") -> "RunDir":
        """`runs/<name>/` under the working directory (or `root`)."""
        return cls(Path(root) / name, kind=kind)

    def write_config(self, config: Any) -> Path:
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        return atomic_write_json(self.path / "config.json", config)

    def write_metrics(self, metrics: dict[str, Any], name: str = "metrics.json", report: bool = True) -> Path:
        """Write the metrics atomically; then (re)render `report.html`, so every job's page is current."""
        out = atomic_write_json(self.path / name, metrics)
        if report:
            render_quietly(self.path)
        return out

    def read(self, name: str) -> Any:
        return read_json(self.path / name)

    def file(self, name: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def kind(self) -> str | None:
        p = self.path / "run.json"
        return read_json(p).get("kind") if p.exists() else None
