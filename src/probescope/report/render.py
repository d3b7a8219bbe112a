"""Render a run folder into `report.html`: one self-contained page (inline CSS and SVG, no network).

What goes on the page:
- the run's kind, config and scalar metrics as tables;
- every spec listed in `plots.json` (and in `metrics["plots"]`): plots drawn by `report.svg` ("line", "bar",
  "heatmap") and the HTML blocks below, in the order listed;
- sections from renderers registered per run kind with `@section("kind")`, for what a spec can't say;
- sections for files any run may hold (`@file_section("latents.json")`: SAE latent cards, `eval.json`, ...).

HTML blocks (a spec's "type"; JSON-friendly like the plots):

    {"type": "table", "title": ..., "columns": [...], "rows": [[...]]}
    {"type": "tokens", "title": ..., "tokens": [...], "values": [...]}       tokens highlighted by value
    {"type": "stats", "title": ..., "items": [{"label", "value", "note"?}]}  headline numbers as cards
    {"type": "reasoning", "title": ..., "caption"?: ..., "items": [           texts with marked spans, one per tab
        {"title": ..., "tab"?: short tab label, "subtitle"?: ...,
         "segments": [{"text": ..., "kind": "prompt|kept|marker|skipped|answer", "note"?: hover text}],
         "plot"?: a plot spec drawn next to the text, "plot_caption"?: ...}],
        "legend"?: {kind: name shown in the legend under the block, e.g. {"skipped": "skipped by the exit"}}}

A "reasoning" block shows one item at a time, with tabs and prev/next buttons (←/→ keys) to flip between them
(plain JS in the page). Segment kinds: "kept" plain text (what the model read or wrote and used), "skipped"
greyed and lightly struck (e.g. reasoning an early exit did not need), "marker" a small inline badge (e.g. the
exit point), "prompt" and "answer" boxed lines (the question; the answer given). Text keeps its line breaks and
is HTML-escaped. The wide blocks ("stats", "reasoning") get a section of their own (headed by their title);
the other figures share one "Figures" section, placed where the first of them is listed.
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
.stats{display:flex;flex-wrap:wrap;gap:12px}
.stat{border:1px solid #e5e7eb;border-radius:8px;padding:10px 16px;min-width:130px;background:#fbfcfd}
.stat .v{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}.stat .l{font-size:12px;color:#555}
.stat .n{font-size:11px;color:#888;margin-top:2px}
figure.rs{border:none;padding:0;width:100%}figure.rs figcaption{max-width:none;margin-top:8px}
.rs-nav{display:flex;align-items:center;gap:6px;flex-wrap:wrap;margin-bottom:10px}.rs-tabs{display:flex;flex-wrap:wrap;gap:4px}
.rs-nav button{font:inherit;font-size:13px;border:1px solid #d0d5dd;background:white;border-radius:6px;padding:3px 10px;cursor:pointer}
.rs-nav button:hover{background:#f3f4f6}.rs-nav button.on{background:#1d2330;color:white;border-color:#1d2330}
.rs-pos{font-size:12px;color:#666;margin-left:6px}
.rs-panel{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.rs-panel[hidden]{display:none}
.rs-text{flex:1 1 420px;min-width:320px;max-width:700px}.rs-text h3{font-size:15px;margin:2px 0 4px}
.rs-sub{font-size:12px;color:#555;margin-bottom:8px}
.rs-body{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;line-height:1.6;
border:1px solid #e5e7eb;border-radius:6px;padding:10px 12px;background:#fcfcfd;max-height:560px;overflow:auto}
.seg-skipped{color:#9aa1ad;text-decoration:line-through;text-decoration-color:rgba(154,161,173,.45)}
.seg-marker{display:inline-block;white-space:nowrap;font-family:system-ui,sans-serif;font-size:11px;font-weight:600;
color:white;background:#d33;border-radius:9px;padding:0 8px;margin:2px 4px 2px 0}
.seg-prompt,.seg-answer{display:block;font-family:system-ui,sans-serif;border-radius:5px;padding:6px 9px;margin:2px 0 8px}
.seg-prompt{background:#f1f3f7;color:#333}.seg-answer{background:#e8f4ec;color:#14532d;font-weight:600;margin:8px 0 2px}
.rs-plot{flex:0 1 640px;min-width:320px}.rs-plot svg{max-width:100%;height:auto}
.rs-plot .cap{font-size:12px;color:#555;max-width:640px}
.rs-legend .seg{display:inline-block;font-size:12px;margin:0 10px 0 0;padding:0 6px}
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

# Flips a "reasoning" block between its items: tabs, prev/next buttons, ←/→ keys. Plain JS, no network.
REASONING_JS = """
document.addEventListener('DOMContentLoaded',()=>{for(const b of document.querySelectorAll('figure.rs')){
const panels=[...b.querySelectorAll('.rs-panel')],tabs=[...b.querySelectorAll('.rs-tab')],pos=b.querySelector('.rs-pos');
let cur=0;const show=i=>{cur=(i+panels.length)%panels.length;panels.forEach((p,k)=>{p.hidden=k!==cur});
tabs.forEach((t,k)=>{t.classList.toggle('on',k===cur);t.setAttribute('aria-selected',String(k===cur))});
if(pos)pos.textContent=(cur+1)+' / '+panels.length;b.dataset.shown=cur;};
tabs.forEach((t,k)=>t.addEventListener('click',()=>show(k)));
for(const [sel,d] of [['.rs-prev',-1],['.rs-next',1]]){const e=b.querySelector(sel);if(e)e.addEventListener('click',()=>show(cur+d));}
b.addEventListener('keydown',e=>{if(e.key==='ArrowLeft')show(cur-1);else if(e.key==='ArrowRight')show(cur+1);});
show(0);}});
"""

SEGMENT_KINDS = ("prompt", "kept", "marker", "skipped", "answer")
WIDE = ("stats", "reasoning")  # blocks that take a section of their own


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


def stats_html(items: list[dict[str, Any]], caption: str = "") -> str:
    """Headline numbers as cards: [{"label", "value", "note"?}] (a float value is shown to 4 significant digits)."""
    cards = []
    for it in items:
        v = it.get("value")
        v = f"{v:.4g}" if isinstance(v, float) else v
        note = f'<div class="n">{esc(it["note"])}</div>' if it.get("note") else ""
        cards.append(f'<div class="stat"><div class="v">{esc(v)}</div><div class="l">{esc(it.get("label", ""))}</div>{note}</div>')
    return figure(f'<div class="stats">{"".join(cards)}</div>', caption)


def _segment(seg: dict[str, Any]) -> str:
    kind = seg.get("kind", "kept")
    if kind not in SEGMENT_KINDS:
        raise ValueError(f"unknown segment kind {kind!r}: use one of {', '.join(SEGMENT_KINDS)}")
    note = f' title="{esc(seg["note"])}"' if seg.get("note") else ""
    return f'<span class="seg seg-{kind}"{note}>{esc(seg.get("text", ""))}</span>'


def reasoning_html(spec: dict[str, Any]) -> str:
    """Texts with kept / skipped / marked spans, one item shown at a time (see the module docstring)."""
    items = list(spec.get("items", []))
    if not items:
        return figure("<div>no items</div>", spec.get("caption", ""))
    panels, tabs = [], []
    for i, it in enumerate(items):
        title = str(it.get("title", f"item {i + 1}"))
        on = " on" if i == 0 else ""
        tabs.append(f'<button type="button" class="rs-tab{on}" role="tab" title="{esc(title)}">{esc(it.get("tab") or i + 1)}</button>')
        sub = f'<div class="rs-sub">{esc(it["subtitle"])}</div>' if it.get("subtitle") else ""
        body = "".join(_segment(s) for s in it.get("segments", []))
        plot = ""
        if it.get("plot"):
            cap = f'<div class="cap">{esc(it["plot_caption"])}</div>' if it.get("plot_caption") else ""
            plot = f'<div class="rs-plot">{svg.draw(it["plot"])}{cap}</div>'
        panels.append(f'<div class="rs-panel" data-i="{i}"{"" if i == 0 else " hidden"}><div class="rs-text">'
                      f'<h3>{esc(title)}</h3>{sub}<div class="rs-body">{body}</div></div>{plot}</div>')
    nav = ""
    if len(items) > 1:
        nav = (f'<div class="rs-nav"><button type="button" class="rs-prev" aria-label="previous">‹ prev</button>'
               f'<div class="rs-tabs" role="tablist">{"".join(tabs)}</div>'
               f'<button type="button" class="rs-next" aria-label="next">next ›</button>'
               f'<span class="rs-pos">1 / {len(items)}</span></div>')
    used = [k for k in SEGMENT_KINDS if any(s.get("kind", "kept") == k for it in items for s in it.get("segments", []))]
    names = {"prompt": "question", "kept": "kept", "marker": "marker", "skipped": "skipped", "answer": "answer"}
    names.update(spec.get("legend", {}))
    legend = "".join(f'<span class="seg seg-{k}">{esc(names[k])}</span>' for k in used if k != "prompt")
    cap = spec.get("caption", "")
    foot = f'<figcaption><span class="rs-legend">{legend}</span>{esc(cap)}</figcaption>' if legend or cap else ""
    return f'<figure class="fig rs" tabindex="0">{nav}{"".join(panels)}{foot}</figure>'


def draw_spec(spec: dict[str, Any]) -> str:
    """One figure from a spec: the svg kinds, plus the HTML blocks "table", "tokens", "stats" and "reasoning"."""
    kind = spec.get("type")
    if kind == "reasoning":
        return reasoning_html(spec)
    if kind == "stats":
        return stats_html(spec.get("items", []), spec.get("caption", ""))
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


MAIN_KEYS = ("acc", "recovered", "auroc", "ppl", "recall", "skill", "mean", "value", "rate", "r2", "fvu", "share")


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "yes" if v is True else "no" if v is False else "—" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.3g}" if v == v else "nan"


def metric_rows(d: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The metrics as a reader wants them: nested keys joined by › in words, numbers rounded to 3 significant
    digits, and a value given with its interval ({"acc": .95, "lo": .8, "hi": .99} or "x" beside "x_ci") on one
    row — `before › forget › acc  0.95 [0.8, 0.99]`, not three rows of a flat dump."""
    out: list[tuple[str, str]] = []
    label = lambda *ks: " › ".join(str(k).replace("_", " ") for k in ks)  # noqa: E731
    main = next((k for k in MAIN_KEYS if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)), None)
    has_ci = main is not None and isinstance(d.get("lo"), (int, float)) and isinstance(d.get("hi"), (int, float))
    for k, v in d.items():
        if k == "plots" or len(out) >= 400:
            continue
        if has_ci and k in ("lo", "hi"):
            continue
        ci = d.get(f"{k}_ci")
        if has_ci and k == main:
            out.append((label(*path, k), f"{_num(v)} [{_num(d['lo'])}, {_num(d['hi'])}]"))
        elif isinstance(ci, (list, tuple)) and len(ci) == 2 and isinstance(v, (int, float)):
            out.append((label(*path, k), f"{_num(v)} [{_num(ci[0])}, {_num(ci[1])}]"))
        elif k.endswith("_ci") and k[:-3] in d:
            continue
        elif isinstance(v, dict):
            out += metric_rows(v, (*path, k))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((label(*path, k), _num(v)))
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
    figs, at = [], None
    for s in specs:
        if s.get("type") in WIDE:
            title = f"<h2>{esc(s['title'])}</h2>" if s.get("title") else ""
            sections.append(f"<section>{title}{draw_spec(s)}</section>")
        else:
            at = len(sections) if at is None else at
            figs.append(draw_spec(s))
    # SVG files a job wrote itself (e.g. a sweep plot) are inlined too: the page stays self-contained.
    figs += [figure(_inline_svg(f), f.name) for f in sorted(run.glob("*.svg"))]
    if figs:
        at = len(sections) if at is None else at
        sections.insert(at, '<section><h2>Figures</h2><div class="figs">' + "".join(figs) + "</div></section>")
    scalars = metric_rows(metrics)
    if scalars:
        sections.append("<section><h2>Metrics</h2>" + table(["metric", "value (95% interval where computed)"],
                                                            [list(x) for x in scalars]) + "</section>")
    if config:
        rows = [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in (config.items() if isinstance(config, dict) else [])]
        sections.append("<section><h2>Config</h2>" + table(["option", "value"], rows) + "</section>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>probescope · {esc(run.name)}</title>
<style>{CSS}</style><script>{CHECK_JS}{REASONING_JS}</script></head><body>
<header><h1>probescope · {esc(kind)} · {esc(run.name)}</h1>
<div class="sub">{esc(meta.get("started", ""))} · rendered {time.strftime("%Y-%m-%d %H:%M:%S")} · {esc(run.resolve())}</div></header>
<main>{"".join(sections)}</main></body></html>"""
    out = run / "report.html"
    atomic_write_bytes(out, page.encode("utf-8"))
    return out


# Built-in sections live next to their features; importing registers them.
from . import sections as _sections  # noqa: E402,F401
