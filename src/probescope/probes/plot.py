"""Probe plots, drawn by the one SVG plotter (`probescope.report.svg`)."""

from __future__ import annotations

import math
from pathlib import Path

from ..core.io import atomic_write_bytes
from ..report.svg import line_chart


def line_chart_svg(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str) -> str:
    """SVG text: `series` maps a name to (xs, ys); NaN points are skipped."""
    if not any(y == y for _, ys in series.values() for y in ys):
        raise ValueError("nothing to plot: every value is NaN")
    return line_chart({"type": "line", "title": title, "x_label": xlabel, "y_label": ylabel,
                       "series": [{"name": k, "x": list(xs), "y": [y if y is not None and math.isfinite(y) else None for y in ys]}
                                  for k, (xs, ys) in series.items()]})


def write_svg(path: str | Path, svg: str) -> Path:
    return atomic_write_bytes(path, svg.encode())
