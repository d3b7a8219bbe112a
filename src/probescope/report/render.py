"""Render a run folder into `report.html`: one self-contained page (inline CSS and SVG, no network).

What goes on the page:
- the run's kind, config and scalar metrics as tables;
- every plot spec listed in `plots.json` (and in `metrics["plots"]`), drawn by `report.svg`;
- sections from renderers registered per run kind with `@section("kind")`, for what a spec can't say;
- sections for files any run may hold (`@file_section("latents.json")`: SAE latent cards, `eval.json`, ...).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Callable

from ..core.io import atomic_write_bytes, read_json
from . import svg

SECTIONS: dict[str, list[Callable[[Path, dict], list[str]]]] = {}
FILE_SECTIONS: dict[str, list[Callable[[Path, Any], list[str]]]] = {}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:white;padding:18px 32px}header h1{margin:0;font-size:22px}
header .sub{opacity:.75;font-size:13px;margin-top:4px}
main{padding:16px 32px;max-width:1400px}
section{background:white;border-radius:8px;padding:12px 20px;margin:14px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:17px;margin:6px 0 10px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:14px}
figure.fig{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:6px;background:white}
figure.fig figcaption{font-size:12px;color:#555;max-width:640px}
.tok{padding:1px 0;border-radius:2px;white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;font-size:12px}
.tokens{line-height:1.9;max-width:900px}
"""

# Checks the page itself: every figure drew with a non-zero size, no script errors. The browser test reads it.
CHECK_JS = """
window.__errors=[];window.addEventListener('error',e=>window.__errors.push(String(e.message)));
window.addEventListener('load',()=>{const f=[...document.querySelectorAll('figure.fig')];
const ok=f.filter(x=>{const r=x.getBoundingClientRect();const s=x.querySelector('svg,table,div');
const q=s?s.getBoundingClientRect():r;return r.width>0&&r.height>0&&q.width>0&&q.height>0});
document.body.dataset.figures=f.length;document.body.dataset.figuresOk=ok.length;
document.body.dataset.errors=window.__errors.length;});
"""


def section(kind: str) -> Callable:
    """Register `fn(run_path, metrics) -> [html fragments]` for runs of `kind`."""

    def deco(fn: Callable[[Path, dict], list[str]]):
        SECTIONS.setdefault(kind, []).append(fn)
        return fn

    return deco


def file_section(name: str) -> Callable:
    """Register `fn(run_path, parsed JSON of RUN/name) -> [html fragments]`, drawn whenever the file exists."""

    def deco(fn: Callable[[Path, Any], list[str]]):
        FILE_SECTIONS.setdefault(name, []).append(fn)
        return fn

    return deco


def esc(s: Any) -> str:
    return html.escape(str(s))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v:,}</td>'
    return f"<td>{esc(v)}</td>"


def table(columns: list[str], rows: list[list[Any]], title: str = "") -> str:
    """An HTML table figure."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    return figure(f"<table><tr>{head}</tr>{body}</table>", title)


def tokens_html(tokens: list[str], values: list[float], title: str = "") -> str:
    """Tokens highlighted by value (e.g. a latent's activation or a probe's belief)."""
    top = max((abs(v) for v in values), default=1.0) or 1.0
    spans = []
    for t, v in zip(tokens, values):
        a = min(abs(v) / top, 1.0)
        color = f"rgba(255,114,92,{a:.2f})" if v >= 0 else f"rgba(66,105,208,{a:.2f})"
        spans.append(f'<span class="tok" title="{v:.3g}" style="background:{color}">{esc(t)}</span>')
    return figure(f'<div class="tokens">{"".join(spans)}</div>', title)


def figure(inner: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="fig">{inner}{cap}</figure>'


def draw_spec(spec: dict[str, Any]) -> str:
    """One figure from a spec: the svg kinds, plus "table" and "tokens"."""
    kind = spec.get("type")
    if kind == "table":
        return table(spec["columns"], spec["rows"], spec.get("title", ""))
    if kind == "tokens":
        return tokens_html(spec["tokens"], spec["values"], spec.get("title", ""))
    return figure(svg.draw(spec), spec.get("caption", ""))


def flat_scalars(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if k == "plots":
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(out) < 200:
            out += flat_scalars(v, key + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((key, v))
    return out


def _inline_svg(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.find("<svg")
    return text[start:] if start >= 0 else f"<pre>{esc(text[:2000])}</pre>"


def _load(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def render_report(run: str | Path) -> Path:
    """Write `RUN/report.html` from the run folder's files and return its path."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder '{run}' does not exist")
    meta = _load(run / "run.json") or {}
    config = _load(run / "config.json") or {}
    metrics = _load(run / "metrics.json") or {}
    specs = list(_load(run / "plots.json") or []) + list(metrics.get("plots", []))
    kind = meta.get("kind", "run")
    sections: list[str] = []
    for fn in SECTIONS.get(kind, []):
        frags = fn(run, metrics)
        if frags:
            sections.append("".join(frags))
    for name, fns in FILE_SECTIONS.items():
        if (run / name).exists():
            data = _load(run / name)
            for fn in fns:
                frags = fn(run, data)
                if frags:
                    sections.append("".join(frags))
    figs = [draw_spec(s) for s in specs]
    # SVG files a job wrote itself (e.g. a sweep plot) are inlined too: the page stays self-contained.
    figs += [figure(_inline_svg(f), f.name) for f in sorted(run.glob("*.svg"))]
    if figs:
        sections.append('<section><h2>Figures</h2><div class="figs">' + "".join(figs) + "</div></section>")
    scalars = flat_scalars(metrics)
    if scalars:
        sections.append("<section><h2>Metrics</h2>" + table(["metric", "value"], [list(x) for x in scalars]) + "</section>")
    if config:
        rows = [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in (config.items() if isinstance(config, dict) else [])]
        sections.append("<section><h2>Config</h2>" + table(["option", "value"], rows) + "</section>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>probescope · {esc(run.name)}</title>
<style>{CSS}</style><script>{CHECK_JS}</script></head><body>
<header><h1>probescope · {esc(kind)} · {esc(run.name)}</h1>
<div class="sub">{esc(meta.get("started", ""))} · rendered {time.strftime("%Y-%m-%d %H:%M:%S")} · {esc(run.resolve())}</div></header>
<main>{"".join(sections)}</main></body></html>"""
    out = run / "report.html"
    atomic_write_bytes(out, page.encode("utf-8"))
    return out


# Built-in sections live next to their features; importing registers them.
from . import sections as _sections  # noqa: E402,F401
