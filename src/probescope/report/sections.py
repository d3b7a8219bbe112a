"""Report sections for the run kinds whose figures need more than a plot spec."""

from __future__ import annotations

from pathlib import Path

from .render import esc, figure, section, table
from . import svg


@section("demo")
def demo_section(run: Path, metrics: dict) -> list[str]:
    prompts = metrics.get("prompts", [])
    if not prompts:
        return []
    layers = [str(x) for x in metrics.get("layers", [])]
    rows = [[p["prompt"].replace("\n", "⏎")] + [p["guesses"].get(l, "") for l in layers] for p in prompts]
    norms = {"type": "line", "title": "Residual-stream norm at the last token", "x_label": "layer", "y_label": "‖x‖",
             "series": [{"name": p["prompt"][:22], "x": [int(l) for l in layers], "y": [p["norms"][l] for l in layers]}
                        for p in prompts]}
    return ["<section><h2>What each layer guesses next (logit lens)</h2><div class='figs'>",
            table(["prompt"] + [f"L{l}" for l in layers], rows), figure(svg.draw(norms)), "</div>",
            f"<p>model <b>{esc(metrics.get('model'))}</b>, {metrics.get('n_layers')} layers, d_model {metrics.get('d_model')}; "
            f"load {metrics.get('load_s', 0):.1f} s, capture {metrics.get('capture_s', 0):.2f} s.</p></section>"]
