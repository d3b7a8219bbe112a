"""A small self-contained SVG line chart (no matplotlib): a metric by layer, one line per probe kind."""

from __future__ import annotations

from html import escape
from pathlib import Path

from ..io import atomic_write_bytes

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def line_chart_svg(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str,
                   width: int = 640, height: int = 360) -> str:
    """SVG text: `series` maps a name to (xs, ys); NaN points are skipped."""
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y == y]
    if not pts:
        raise ValueError("nothing to plot: every value is NaN")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    pad = max(0.02, (y1 - y0) * 0.1)
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 60, 150, 36, 46
    pw, ph = width - L - R, height - T - B

    def sx(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return T + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="black"/>']
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{L - 4}" y1="{sy(yv):.1f}" x2="{L + pw}" y2="{sy(yv):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3f}</text>')
    xs_all = sorted({p[0] for p in pts})
    step = max(1, len(xs_all) // 15)
    for xv in xs_all[::step]:
        out.append(f'<text x="{sx(xv):.1f}" y="{T + ph + 16}" text-anchor="middle">{xv:g}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{T + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {T + ph / 2})">{escape(ylabel)}</text>')
    for i, (name, (xs, ys)) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        seg = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y == y]
        if len(seg) > 1:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in seg)}"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"/>' for a, b in seg]
        ly = T + 14 + 18 * i
        out.append(f'<line x1="{L + pw + 12}" y1="{ly}" x2="{L + pw + 32}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{L + pw + 36}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(path: str | Path, svg: str) -> Path:
    return atomic_write_bytes(path, svg.encode())
