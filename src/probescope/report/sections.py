"""Report sections for the run kinds whose figures need more than a plot spec."""

from __future__ import annotations

from pathlib import Path

from .render import flat_scalars, esc, figure, file_section, section, table, tokens_html
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


@file_section("latents.json")
def latent_cards(run: Path, stats: dict, n_cards: int = 12, n_contexts: int = 4) -> list[str]:
    """SAE latent cards: label, frequency and top contexts, the firing token highlighted by its activation."""
    recs = [(int(j), r) for j, r in stats.get("latents", {}).items() if r.get("top_contexts")]
    recs.sort(key=lambda jr: -jr[1].get("max_activation", 0.0))
    if not recs:
        return []
    cards = []
    for j, r in recs[:n_cards]:
        toks, vals = [], []
        for c in r["top_contexts"][:n_contexts]:
            toks += [c["context"][-80:], c["token"], "  ⏎  "]
            vals += [0.0, float(c["activation"]), 0.0]
        cards.append(tokens_html(toks, vals, f"latent {j}: {r.get('label', '')} · fires on "
                                              f"{r.get('frequency', 0):.2%} of tokens · max {r.get('max_activation', 0):.3g}"))
    dead = sum(1 for r in stats.get("latents", {}).values() if not r.get("top_contexts"))
    return [f"<section><h2>SAE latents: top contexts ({len(recs)} that fired, {dead} silent, of the "
            f"{len(stats.get('latents', {}))} scanned)</h2><div class='figs'>", *cards, "</div></section>"]


@file_section("eval.json")
def eval_table(run: Path, res: dict) -> list[str]:
    """An evaluation written next to a trained artifact (e.g. `probescope sae eval`)."""
    rows = [list(x) for x in flat_scalars(res)] if isinstance(res, dict) else []
    return ["<section><h2>Evaluation</h2>", table(["metric", "value"], rows), "</section>"] if rows else []
