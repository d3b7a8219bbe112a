"""The page section of a graph run: the pruned graph drawn as nodes by position × layer, edges by weight."""

from __future__ import annotations

import html
from pathlib import Path

from ..core.io import read_json
from ..report.render import section, table

COLORS = {"cross layer transcoder": "#e0a030", "mlp reconstruction error": "#888888", "embedding": "#4a7bd0",
          "logit": "#3a9a5a"}


def graph_svg(data: dict, max_links: int = 400, w: int = 960, h: int = 560) -> str:
    """SVG of a graph JSON (circuit-tracer schema): x = token position, y = layer (embeddings at the bottom,
    logits at the top), node colour by kind, edge width by |weight| (blue +, red −); hover shows what a node is."""
    nodes = {n["node_id"]: n for n in data["nodes"]}
    if not nodes:
        return ""
    toks = data["metadata"].get("prompt_tokens", [])
    n_pos = max(len(toks), 1 + max(n["ctx_idx"] for n in nodes.values()))
    layers = [int(n["layer"]) for n in nodes.values() if n["layer"] != "E"]
    top = max(layers) if layers else 1
    ml, mb, mt = 40, 60, 20
    dx, dy = (w - ml - 20) / max(n_pos, 1), (h - mb - mt) / (top + 1)
    slots: dict[tuple[int, int], int] = {}
    pos: dict[str, tuple[float, float]] = {}
    for n in sorted(nodes.values(), key=lambda n: (-(n.get("influence") or 0))):
        row = -1 if n["layer"] == "E" else int(n["layer"])
        key = (n["ctx_idx"], row)
        k = slots.get(key, 0)
        slots[key] = k + 1
        x = ml + dx * (n["ctx_idx"] + 0.5) + (k % 5 - 2) * min(7.0, dx / 6)
        y = h - mb - dy * (row + 1) - (k // 5) * 7
        pos[n["node_id"]] = (x, y)
    links = sorted(data["links"], key=lambda e: -abs(e["weight"]))[:max_links]
    wmax = max((abs(e["weight"]) for e in links), default=1.0) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           'style="background:#fff;font:11px sans-serif">']
    for e in reversed(links):
        (x1, y1), (x2, y2) = pos[e["source"]], pos[e["target"]]
        col = "#3060c0" if e["weight"] > 0 else "#c03030"
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{col}" '
                   f'stroke-opacity="0.45" stroke-width="{0.3 + 3.5 * abs(e["weight"]) / wmax:.2f}"/>')
    for nid, (x, y) in pos.items():
        n = nodes[nid]
        tip = f'{n["feature_type"]} {nid}' + (f' · {n["clerp"]}' if n.get("clerp") else "") + \
              (f' · act {n["activation"]:.3g}' if n.get("activation") is not None else "")
        r = 5 if n["feature_type"] in ("embedding", "logit") else 3.5
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{COLORS.get(n["feature_type"], "#999")}">'
                   f'<title>{html.escape(tip)}</title></circle>')
    for i, t in enumerate(toks):
        out.append(f'<text x="{ml + dx * (i + 0.5):.1f}" y="{h - mb + 28}" text-anchor="middle">'
                   f'{html.escape(t[:10])}</text>')
    for row in range(-1, top + 1, max(1, (top + 2) // 8)):
        label = "emb" if row == -1 else ("logit" if row == top else f"L{row}")
        out.append(f'<text x="4" y="{h - mb - dy * (row + 1) + 4:.1f}">{label}</text>')
    out.append("</svg>")
    return "".join(out)


@section("circuit-graph")
def graph_section(run: Path, metrics: dict) -> list[str]:
    f = run / "graph.json"
    if not f.exists():
        return []
    data = read_json(f)
    rows = [[k, f"{metrics[k]:.3f}" if isinstance(metrics.get(k), float) else metrics.get(k)]
            for k in ("replacement", "completeness", "pruned_replacement", "pruned_completeness", "n_feature_nodes",
                      "pruned_nodes", "pruned_edges", "top_logit", "top_logit_prob", "seconds") if k in metrics]
    return ["<section><h2>Attribution graph (pruned)</h2>", graph_svg(data),
            f"<p>prompt: <code>{html.escape(str(metrics.get('prompt', '')))}</code>. Nodes by token position (x) and "
            "layer (y): embeddings at the bottom, logits at the top; orange features, grey errors; edges blue "
            "(excitatory) or red (inhibitory), width by weight. graph.json opens in circuit-tracer's viewer.</p>",
            table(["figure", "value"], rows), "</section>"]
