"""Small, dependency-free SVG plots: line charts, bar charts, heatmaps. Every feature's figures go here.

A plot is described as data (a dict "spec", JSON-friendly) so jobs can save their figures in the run
folder and the report draws them later:

    {"type": "line", "title": ..., "x_label": ..., "y_label": ..., "series": [{"name", "x", "y", "lo"?, "hi"?,
     "labels"?}], "vlines": [{"x", "label"}], "hlines": [{"y", "label"}], "y_range": [lo, hi], "log_x": false}
    {"type": "bar", "title": ..., "x_label": ..., "y_label": ..., "labels": [...], "values": [...], "lo"?: [...],
     "hi"?: [...]}
    {"type": "heatmap", "title": ..., "x_label": (the columns), "y_label": (the rows), "value_label": ...,
     "rows": [...], "cols": [...], "values": [[...]], "fmt": ".3f", "v_range"?: [lo, hi]}

The rules every plot keeps (`check_spec` states them; tests run with PROBESCOPE_STRICT_PLOTS=1, which makes a
spec that breaks one an error): every axis is titled; a heatmap holding values of both signs (or marked
"signed") is drawn on a diverging scale centred at zero (red below, white at 0, blue above) with a colour bar;
intervals given as "lo"/"hi" are drawn (a band around a line, whiskers on a bar); the legend sits outside the
data (right of the plot); a marker's label is turned to stay inside the plot, never clipped. A series' optional
"labels" (one string per point) become the points' hover tooltips; "r" sets its markers' radius, "dashed" dashes
its line. A title too long for the plot's width wraps onto more lines (the plot grows taller). HTML blocks
("table", "tokens", "reasoning", "stats") are drawn by `report.render.draw_spec`.
"""

from __future__ import annotations

import html
import math
import os
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


def _frame(title: str, body: list[str], x_label: str = "", y_label: str = "", w: int = W, h: int = H,
           x_mid: float | None = None) -> str:
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
        xm = (M["l"] + w - M["r"]) / 2 if x_mid is None else x_mid
        parts.append(f'<text x="{xm:.1f}" y="{h - 8}" text-anchor="middle" font-size="12">{_esc(x_label)}</text>')
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
    ys = [y for s in series for key in ("y", "lo", "hi") for y in (s.get(key) or [])
          if y is not None and math.isfinite(y)]
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
        if vl.get("label"):  # a label that would run past the plot's right edge is written leftwards of its line
            left = x + 4 + 6.6 * len(str(vl["label"])) > W - M["r"]
            lx, anchor = (x - 4, "end") if left else (x + 4, "start")
            body.append(f'<text x="{lx:.1f}" y="{M["t"] + 12}" font-size="11" fill="#d33" '
                        f'text-anchor="{anchor}">{_esc(vl["label"])}</text>')
    for hl in spec.get("hlines", []):
        if not y0 <= hl["y"] <= y1:
            continue
        y = sy(hl["y"])
        body.append(f'<line x1="{M["l"]}" x2="{W - M["r"]}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888" stroke-dasharray="2 3"/>')
        if hl.get("label"):
            body.append(f'<text x="{M["l"] + 4}" y="{y - 4:.1f}" font-size="11" fill="#666">{_esc(hl["label"])}</text>')
    legend = []
    names = [str(s.get("name", "")) for s in series]
    lw = (24 + 6.6 * min(max((len(n) for n in names), default=0), 40)) if any(names) else 0
    lx, top = W - M["r"] + 14, M["t"]  # the legend sits right of the plot: it never covers data
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        lo_, hi_ = s.get("lo"), s.get("hi")
        if lo_ and hi_:  # the interval as a band around the line
            band = [(sx(x), sy(a), sy(b)) for x, a, b in zip(s["x"], lo_, hi_)
                    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
                    and (not log_x or x > 0)]
            if band:
                poly = " ".join(f"{x:.1f},{a:.1f}" for x, a, _ in band) + " " + \
                    " ".join(f"{x:.1f},{b:.1f}" for x, _, b in reversed(band))
                body.append(f'<polygon class="interval" points="{poly}" fill="{color}" fill-opacity="0.18" stroke="none"/>')
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
            name = names[i] if len(names[i]) <= 40 else names[i][:39] + "…"
            legend.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
            legend.append(f'<text x="{lx + 14:.1f}" y="{ly}" font-size="11"><title>{_esc(names[i])}</title>'
                          f'{_esc(name)}</text>')
    body += legend
    return _frame(spec.get("title", ""), body, spec.get("x_label", ""), spec.get("y_label", ""),
                  w=int(W + lw + 8) if lw else W, x_mid=(M["l"] + W - M["r"]) / 2)


def bar_chart(spec: dict[str, Any]) -> str:
    """Vertical bars with value labels."""
    labels, values = list(spec.get("labels", [])), [float(v) for v in spec.get("values", [])]
    if not values:
        return _frame(spec.get("title", ""), ['<text x="50%" y="50%" text-anchor="middle">no data</text>'])
    los, his = spec.get("lo") or [], spec.get("hi") or []
    ends = [float(v) for v in [*los, *his] if v is not None and math.isfinite(v)]
    lo, hi = min(0.0, *values, *ends), max(0.0, *values, *ends)
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
        a = los[i] if i < len(los) else None
        b = his[i] if i < len(his) else None
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):  # the interval: a whisker
            cx, ya, yb = x + bw * 0.35, sy(a), sy(b)
            body.append(f'<path class="interval" d="M{cx:.1f},{ya:.1f}V{yb:.1f}M{cx - 5:.1f},{ya:.1f}h10'
                        f'M{cx - 5:.1f},{yb:.1f}h10" stroke="#1d2330" stroke-width="1.3" fill="none"/>')
            top = min(top, ya, yb)
        body.append(f'<text x="{x + bw * 0.35:.1f}" y="{top - 4:.1f}" text-anchor="middle" font-size="11">{_fmt(v)}</text>')
        body.append(f'<text x="{x + bw * 0.35:.1f}" y="{H - M["b"] + 16}" text-anchor="middle" font-size="11">{_esc(lab)}</text>')
    return _frame(spec.get("title", ""), body, spec.get("x_label", ""), spec.get("y_label", ""))


def _heat_color(t: float) -> str:
    t = min(max(t, 0.0), 1.0)  # white → blue
    r, g, b = int(255 - 189 * t), int(255 - 150 * t), int(255 - 47 * t)
    return f"rgb({r},{g},{b})"


def _diverging_color(t: float) -> str:
    """t in [-1, 1]: red (−1) → white (0) → blue (+1), symmetric in lightness."""
    t = min(max(t, -1.0), 1.0)
    if t >= 0:
        return _heat_color(t)
    u = -t  # white → red
    r, g, b = int(255 - 41 * u), int(255 - 189 * u), int(255 - 189 * u)  # as far from white as blue
    return f"rgb({r},{g},{b})"


def is_signed(spec: dict[str, Any]) -> bool:
    """A heatmap whose values have both signs (or that says it holds signed data) is drawn diverging."""
    if spec.get("signed") is not None:
        return bool(spec["signed"])
    flat = [v for r in spec.get("values", []) for v in r if v is not None and math.isfinite(v)]
    lo, hi = spec.get("v_range") or ((min(flat), max(flat)) if flat else (0, 0))
    return lo < 0 < hi


def heatmap(spec: dict[str, Any]) -> str:
    """A labelled grid of values with a colour bar: a diverging scale centred at zero (red < 0 < blue) for signed
    data, white → blue from the smallest to the largest otherwise."""
    rows, cols = list(spec.get("rows", [])), list(spec.get("cols", []))
    vals: Sequence[Sequence[float | None]] = spec.get("values", [])
    flat = [v for r in vals for v in r if v is not None and math.isfinite(v)]
    if not flat:
        return _frame(spec.get("title", ""), ['<text x="50%" y="50%" text-anchor="middle">no data</text>'])
    lo, hi = spec.get("v_range") or (min(flat), max(flat))
    signed = is_signed(spec)
    if signed:  # centred at zero: equal distances from 0 get equal strength of colour on both sides
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    fmt = spec.get("fmt", ".3f")
    left, top = 140, 56
    cw = max(40, min(110, (W - left - 16) / max(len(cols), 1)))
    ch = 26
    bar_w = 90  # the colour bar, right of the grid
    w, h = int(left + cw * len(cols) + 16 + bar_w), int(top + ch * len(rows) + 44)
    body = []
    for j, c in enumerate(cols):
        body.append(f'<text x="{left + cw * (j + 0.5):.1f}" y="{top - 8}" text-anchor="middle" font-size="11">{_esc(c)}</text>')
    for i, r in enumerate(rows):
        body.append(f'<text x="{left - 6}" y="{top + ch * (i + 0.5) + 4:.1f}" text-anchor="end" font-size="11">{_esc(r)}</text>')
        for j in range(len(cols)):
            v = vals[i][j] if j < len(vals[i]) else None
            if v is None or not math.isfinite(v):
                t, fill = 0.0, "#f4f4f4"
            elif signed:
                t = v / hi
                fill = _diverging_color(t)
            else:
                t = 0.0 if hi == lo else (v - lo) / (hi - lo)
                fill = _heat_color(t)
            body.append(f'<rect x="{left + cw * j:.1f}" y="{top + ch * i:.1f}" width="{cw - 2:.1f}" height="{ch - 2}" fill="{fill}"/>')
            txt = "–" if v is None else format(v, fmt)
            color = "white" if abs(t) > 0.6 else "black"
            body.append(f'<text x="{left + cw * (j + 0.5) - 1:.1f}" y="{top + ch * (i + 0.5) + 4:.1f}" text-anchor="middle" font-size="11" fill="{color}">{txt}</text>')
    body += _colour_bar(left + cw * len(cols) + 24, top, max(ch * len(rows) - 2, 60), lo, hi, signed,
                        str(spec.get("value_label", "")))
    return _frame(spec.get("title", ""), body, spec.get("x_label", ""), spec.get("y_label", ""), w=w, h=h,
                  x_mid=left + cw * len(cols) / 2)


def _colour_bar(x: float, y: float, height: float, lo: float, hi: float, signed: bool, label: str) -> list[str]:
    """A vertical colour bar with its ends (and 0 for a diverging scale) marked, titled with the value's name."""
    steps, out = 24, ['<g class="colour-bar">']
    for k in range(steps):
        t = 1 - (k + 0.5) / steps  # top = largest
        fill = _diverging_color(2 * t - 1) if signed else _heat_color(t)
        out.append(f'<rect x="{x:.1f}" y="{y + k * height / steps:.1f}" width="12" height="{height / steps + 0.5:.1f}" '
                   f'fill="{fill}"/>')
    marks = [(hi, y), (lo, y + height)] + ([(0.0, y + height / 2)] if signed else [])
    for v, yy in marks:
        out.append(f'<text x="{x + 16:.1f}" y="{yy + 4:.1f}" font-size="10">{_fmt(v)}</text>')
    if label:
        cy = y + height / 2
        out.append(f'<text x="{x + 62:.1f}" y="{cy:.1f}" font-size="11" text-anchor="middle" '
                   f'transform="rotate(-90 {x + 62:.1f} {cy:.1f})">{_esc(label)}</text>')
    return out + ["</g>"]


PLOTS = {"line": line_chart, "bar": bar_chart, "heatmap": heatmap}


def check_spec(spec: dict[str, Any]) -> list[str]:
    """What in a plot spec breaks the house's rules (empty: none): an untitled axis, a colour scale without a name,
    an interval given on one side only. (The legend needs no rule: `line_chart` always puts it outside the data;
    an old spec's "legend" key is ignored.)"""
    kind, title = spec.get("type"), spec.get("title", "")
    bad = [f"{kind} plot {title!r}: the {axis} axis has no title ({key})"
           for axis, key in (("x", "x_label"), ("y", "y_label")) if not str(spec.get(key, "")).strip()]
    if kind == "heatmap" and not str(spec.get("value_label", "")).strip():
        bad.append(f"heatmap {title!r}: the colour bar has no title (value_label)")
    if kind == "line":
        bad += [f"line plot {title!r}: series {s.get('name')!r} gives only one side of its interval"
                for s in spec.get("series", []) if bool(s.get("lo")) != bool(s.get("hi"))]
    if kind == "bar" and bool(spec.get("lo")) != bool(spec.get("hi")):
        bad.append(f"bar plot {title!r}: only one side of the intervals is given")
    return bad


def draw(spec: dict[str, Any]) -> str:
    """SVG for a plot spec (see the module docstring). With PROBESCOPE_STRICT_PLOTS=1 (the tests) a spec that
    breaks a rule of `check_spec` is an error."""
    kind = spec.get("type")
    if kind not in PLOTS:
        raise ValueError(f"unknown plot type {kind!r}: use one of {', '.join(PLOTS)}")
    if os.environ.get("PROBESCOPE_STRICT_PLOTS") == "1":
        bad = check_spec(spec)
        if bad:
            raise ValueError("plot rules broken: " + "; ".join(bad))
    return PLOTS[kind](spec)
