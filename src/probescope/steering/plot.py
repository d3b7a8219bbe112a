"""The steering sweep plot, drawn by the one SVG plotter (`probescope.report.svg`): one panel per quantity."""

from __future__ import annotations

from typing import Sequence

from ..probes.plot import write_svg  # noqa: F401  (re-exported: one writer for every plot file)
from ..report.svg import H, W, line_chart


def sweep_specs(x: Sequence[float], panels: list[tuple[str, dict[str, Sequence[float]]]], title: str = "",
                xlabel: str = "multiplier") -> list[dict]:
    """Plot specs (for `metrics["plots"]`): one line chart per (y label, {series name: values})."""
    return [{"type": "line", "title": f"{title}: {ylabel}" if title else ylabel, "x_label": xlabel, "y_label": ylabel,
             "series": [{"name": name, "x": list(x), "y": [float(v) for v in vals]} for name, vals in series.items()]}
            for ylabel, series in panels]


def sweep_svg(x: Sequence[float], panels: list[tuple[str, dict[str, Sequence[float]]]], title: str = "",
              xlabel: str = "multiplier") -> str:
    """SVG text: the panels of `sweep_specs` stacked in one picture."""
    charts = [line_chart(s).replace("<svg ", f'<svg y="{i * H}" ', 1) for i, s in enumerate(sweep_specs(x, panels, title, xlabel))]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(charts)}" '
            f'viewBox="0 0 {W} {H * len(charts)}">' + "".join(charts) + "</svg>\n")
