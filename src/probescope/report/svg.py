"""Small, dependency-free SVG plots: line charts, bar charts, heatmaps. Every feature's figures go here.

A plot is described as data (a dict "spec", JSON-friendly) so jobs can save their figures in the run
folder and the report draws them later:

    {"type": "line", "title": ..., "x_label": ..., "y_label": ..., "series": [{"name", "x", "y", "labels"?}],
     "vlines": [{"x", "label"}], "hlines": [{"y", "label"}], "y_range": [lo, hi], "log_x": false,
     "legend": "top-right" | "bottom-left" | "bottom-right" | "top-left"}
    {"type": "bar", "title": ..., "labels": [...], "values": [...], "y_label": ...}
    {"type": "heatmap", "title": ..., "rows": [...], "cols": [...], "values": [[...]], "fmt": ".3f"}

A series' optional "labels" (one string per point) become the points' hover tooltips; "r" sets its markers'
radius, "dashed" dashes its line. A title too long for the
plot's width wraps onto more lines (the plot grows taller), never clipped. HTML blocks ("table", "tokens",
"reasoning", "stats") are drawn by `report.render.draw_spec`.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0"]
W, H = 640, 360
M = {"l": 64, "r": 16, "t": 36, "b": 48}


def _esc(s: Any) -> str:
    return html.escape(str(s))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi == lo:
        hi, lo = hi + 1, lo - 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-12 * abs(hi):
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


TITLE_PX, TITLE_LINE = 8.6, 17  # a 14px semibold character's width, generously (DejaVu Sans is wide); line height


def wrap(text: str, width_px: float, char_px: float = TITLE_PX) -> list[str]:
    """`text` in lines that fit `width_px` (words kept whole unless one alone is too long)."""
    limit = max(8, int(width_px / char_px))
    lines: list[str] = []
    cur = ""
    for word in str(text).split():
        while len(word) > limit:
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(word[:limit])
            word = word[limit:]
        if cur and len(cur) + 1 + len(word) > limit:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur or not lines:
        lines.append(cur)
    return lines


def _frame(title: str, body: list[str], x_label: str = "", y_label: str = "", w: int = W, h: int = H) -> str:
    lines = wrap(title, w - 24) if title else [""]
    extra = TITLE_LINE * (len(lines) - 1)  # more title lines push the plot down; the svg grows by as much
    spans = "".join(f'<tspan x="{w / 2}" dy="{0 if i == 0 else TITLE_LINE}">{_esc(t)}</tspan>' for i, t in enumerate(lines))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {w} {h + extra}" width="{w}" '
        f'height="{h + extra}" role="img">',
        f"<title>{_esc(title)}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14" font-weight="600">{spans}</text>',
        f'<g transform="translate(0,{extra})">' if extra else "<g>",
    ]
    if x_label:
        parts.append(f'<text x="{(M["l"] + w - M["r"]) / 2}" y="{h - 8}" text-anchor="middle" font-size="12">{_esc(x_label)}</text>')
    if y_label:
        cy = (M["t"] + h - M["b"]) / 2
        parts.append(f'<text x="14" y="{cy}" text-anchor="middle" font-size="12" transform="rotate(-90 14 {cy})">{_esc(y_label)}</text>')
    return "\n".join(parts + body + ["</g>", "</svg>"])


def line_chart(spec: dict[str, Any]) -> str:
    """Lines (with point markers) for each series; optional vertical markers and fixed y range."""
    series = [s for s in spec.get("series", []) if len(s.get("x", [])) > 0]
    log_x = bool(spec.get("log_x"))
    tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs = [tx(x) for s in series for x in s["x"] if x is not None and (not log_x or x > 0)]
    ys = [y for s in series for y in s["y"] if y is not None and math.isfinite(y)]
    if not xs or not ys:
        return _frame(spec.get("title", ""), ['<text x="50%" y="50%" text-anchor="middle">no data</text>'])
    x0, x1 = min(xs), max(xs)
    y0, y1 = spec.get("y_range") or (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = (y1 - y0) * 0.05 if not spec.get("y_range") else 0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - M["l"] - M["r"], H - M["t"] - M["b"]
    sx = lambda v: M["l"] + (tx(v) - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda v: M["t"] + (1 - (v - y0) / (y1 - y0)) * ph  # noqa: E731
    body = [f'<rect x="{M["l"]}" y="{M["t"]}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for t in _nice_ticks(y0, y1):
        y = sy(t)
        body.append(f'<line x1="{M["l"]}" x2="{W - M["r"]}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{M["l"] - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
    xt = _nice_ticks(x0, x1)
    for t in xt:
        v = 10**t if log_x else t
        x = M["l"] + (t - x0) / (x1 - x0) * pw
        body.append(f'<text x="{x:.1f}" y="{H - M["b"] + 16}" text-anchor="middle" font-size="11">{_fmt(v)}</text>')
    for vl in spec.get("vlines", []):
        x = sx(vl["x"])
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{M["t"]}" y2="{H - M["b"]}" stroke="#d33" stroke-dasharray="4 3"/>')
        if vl.get("label"):
            body.append(f'<text x="{x + 4:.1f}" y="{M["t"] + 12}" font-size="11" fill="#d33">{_esc(vl["label"])}</text>')
    for hl in spec.get("hlines", []):
        if not y0 <= hl["y"] <= y1:
            continue
        y = sy(hl["y"])
        body.append(f'<line x1="{M["l"]}" x2="{W - M["r"]}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888" stroke-dasharray="2 3"/>')
        if hl.get("label"):
            body.append(f'<text x="{M["l"] + 4}" y="{y - 4:.1f}" font-size="11" fill="#666">{_esc(hl["label"])}</text>')
    legend = []
    names = [str(s.get("name", "")) for s in series]
    lw = 24 + 6.6 * max((len(n) for n in names), default=0)
    where = str(spec.get("legend", "top-right"))
    lx = M["l"] + 8 if where.endswith("left") else W - M["r"] - lw - 4
    top = H - M["b"] - 15 * len(series) - 12 if where.startswith("bottom") else M["t"]
    if any(names):  # a white box under the legend: lines drawn below it stay readable around it
        legend.append(f'<rect x="{lx - 4:.1f}" y="{top + 3}" width="{lw + 4:.1f}" height="{15 * len(series) + 6}" '
                      'fill="white" fill-opacity="0.85" stroke="#e5e7eb"/>')
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        keep = [k for k, (x, y) in enumerate(zip(s["x"], s["y"]))
                if y is not None and math.isfinite(y) and (not log_x or x > 0)]
        pts = [(sx(s["x"][k]), sy(s["y"][k])) for k in keep]
        if not pts:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        dash = ' stroke-dasharray="5 3"' if s.get("dashed") else ""
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        labels, r = s.get("labels") or [], float(s.get("r", 3 if s.get("labels") else 2.5))
        if labels or s.get("markers", len(pts) <= 60):
            tips = [f"<title>{_esc(labels[k])}</title>" if k < len(labels) else "" for k in keep]  # hover tooltips
            body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:g}" fill="{color}">{tip}</circle>'
                     for (x, y), tip in zip(pts, tips)]
        if names[i]:
            ly = top + 17 + 15 * i
            legend.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
            legend.append(f'<text x="{lx + 14:.1f}" y="{ly}" font-size="11">{_esc(names[i])}</text>')
    body += legend
    return _frame(spec.get("title", ""), body, spec.get("x_label", ""), spec.get("y_label", ""))


def bar_chart(spec: dict[str, Any]) -> str:
    """Vertical bars with value labels."""
    labels, values = list(spec.get("labels", [])), [float(v) for v in spec.get("values", [])]
    if not values:
        return _frame(spec.get("title", ""), ['<text x="50%" y="50%" text-anchor="middle">no data</text>'])
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    if hi == lo:
        hi = lo + 1
    pw, ph = W - M["l"] - M["r"], H - M["t"] - M["b"]
    sy = lambda v: M["t"] + (1 - (v - lo) / (hi - lo)) * ph  # noqa: E731
    bw = pw / len(values)
    body = []
    for t in _nice_ticks(lo, hi):
        y = sy(t)
        body.append(f'<line x1="{M["l"]}" x2="{W - M["r"]}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{M["l"] - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
    for i, (lab, v) in enumerate(zip(labels, values)):
        x, y, y_zero = M["l"] + i * bw + bw * 0.15, sy(v), sy(0)
        top, height = min(y, y_zero), max(abs(y_zero - y), 0.5)
        body.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bw * 0.7:.1f}" height="{height:.1f}" fill="{PALETTE[i % len(PALETTE)]}"/>')
        body.append(f'<text x="{x + bw * 0.35:.1f}" y="{top - 4:.1f}" text-anchor="middle" font-size="11">{_fmt(v)}</text>')
        body.append(f'<text x="{x + bw * 0.35:.1f}" y="{H - M["b"] + 16}" text-anchor="middle" font-size="11">{_esc(lab)}</text>')
    return _frame(spec.get("title", ""), body, spec.get("x_label", ""), spec.get("y_label", ""))


def _heat_color(t: float) -> str:
    t = min(max(t, 0.0), 1.0)  # white → blue
    r, g, b = int(255 - 189 * t), int(255 - 150 * t), int(255 - 47 * t)
    return f"rgb({r},{g},{b})"


def heatmap(spec: dict[str, Any]) -> str:
    """A labelled grid of values, coloured from the smallest (white) to the largest (blue)."""
    rows, cols = list(spec.get("rows", [])), list(spec.get("cols", []))
    vals: Sequence[Sequence[float | None]] = spec.get("values", [])
    flat = [v for r in vals for v in r if v is not None and math.isfinite(v)]
    if not flat:
        return _frame(spec.get("title", ""), ['<text x="50%" y="50%" text-anchor="middle">no data</text>'])
    lo, hi = spec.get("v_range") or (min(flat), max(flat))
    fmt = spec.get("fmt", ".3f")
    left, top = 140, 56
    cw = max(40, min(110, (W - left - 16) / max(len(cols), 1)))
    ch = 26
    w, h = int(left + cw * len(cols) + 16), int(top + ch * len(rows) + 24)
    body = []
    for j, c in enumerate(cols):
        body.append(f'<text x="{left + cw * (j + 0.5):.1f}" y="{top - 8}" text-anchor="middle" font-size="11">{_esc(c)}</text>')
    for i, r in enumerate(rows):
        body.append(f'<text x="{left - 6}" y="{top + ch * (i + 0.5) + 4:.1f}" text-anchor="end" font-size="11">{_esc(r)}</text>')
        for j in range(len(cols)):
            v = vals[i][j] if j < len(vals[i]) else None
            t = 0.0 if v is None or hi == lo else (v - lo) / (hi - lo)
            fill = "#f4f4f4" if v is None else _heat_color(t)
            body.append(f'<rect x="{left + cw * j:.1f}" y="{top + ch * i:.1f}" width="{cw - 2:.1f}" height="{ch - 2}" fill="{fill}"/>')
            txt = "–" if v is None else format(v, fmt)
            color = "white" if t > 0.6 else "black"
            body.append(f'<text x="{left + cw * (j + 0.5) - 1:.1f}" y="{top + ch * (i + 0.5) + 4:.1f}" text-anchor="middle" font-size="11" fill="{color}">{txt}</text>')
    return _frame(spec.get("title", ""), body, w=w, h=h)


PLOTS = {"line": line_chart, "bar": bar_chart, "heatmap": heatmap}


def draw(spec: dict[str, Any]) -> str:
    """SVG for a plot spec (see the module docstring)."""
    kind = spec.get("type")
    if kind not in PLOTS:
        raise ValueError(f"unknown plot type {kind!r}: use one of {', '.join(PLOTS)}")
    return PLOTS[kind](spec)
