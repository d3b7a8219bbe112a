"""A self-contained SVG line chart (no plotting library): stacked panels sharing the x axis."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_bytes

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def sweep_svg(x: Sequence[float], panels: list[tuple[str, dict[str, Sequence[float]]]], title: str = "",
              xlabel: str = "multiplier", width: int = 560, panel_h: int = 200) -> str:
    """SVG text: one panel per (y label, {series name: values}); points joined by lines, with axis ticks."""
    left, right, top, gap = 60, 130, 30, 40
    pw = width - left - right
    height = top + len(panels) * (panel_h + gap)
    xmin, xmax = min(x), max(x)
    xspan = (xmax - xmin) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>']
    k = 0
    for p, (ylabel, series) in enumerate(panels):
        y0 = top + p * (panel_h + gap)
        vals = [v for ys in series.values() for v in ys if v == v]
        ymin, ymax = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if ymax - ymin < 1e-12:
            ymin, ymax = ymin - 1, ymax + 1
        pad = 0.05 * (ymax - ymin)
        ymin, ymax = ymin - pad, ymax + pad

        def px(v: float) -> float:
            return left + (v - xmin) / xspan * pw

        def py(v: float) -> float:
            return y0 + panel_h - (v - ymin) / (ymax - ymin) * panel_h

        out.append(f'<rect x="{left}" y="{y0}" width="{pw}" height="{panel_h}" fill="none" stroke="#888"/>')
        for i in range(5):
            yv = ymin + (ymax - ymin) * i / 4
            out.append(f'<text x="{left - 4}" y="{py(yv) + 4:.1f}" text-anchor="end">{_fmt(yv)}</text>')
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" stroke="#eee"/>')
        for xv in x:
            out.append(f'<text x="{px(xv):.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">{_fmt(xv)}</text>')
        out.append(f'<text x="14" y="{y0 + panel_h / 2}" transform="rotate(-90 14 {y0 + panel_h / 2})" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
        for j, (name, ys) in enumerate(series.items()):
            c = COLORS[k % len(COLORS)]
            k += 1
            pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, ys) if b == b)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
            out += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{c}"/>' for a, b in zip(x, ys) if b == b]
            out.append(f'<text x="{left + pw + 8}" y="{y0 + 14 + 16 * j}" fill="{c}">{escape(name)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(path: str | Path, svg: str) -> Path:
    return atomic_write_bytes(path, svg.encode())
