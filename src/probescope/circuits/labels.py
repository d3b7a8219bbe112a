"""Feature labels of a transcoder set: every layer's latents labelled by their top contexts, as the SAE wing labels
an SAE's latents (`sae.latents.latent_stats` / `explain_record`), stored with the set as `layer_L/latents.json`
(so `probescope.sae.explain(latent, "SET/layer_L")` reads them too) and named in the manifest.

`feature_labels(SET)` gives what a graph needs: per layer, per feature, the label and the top contexts; graph.json's
`clerp` carries the label and the page's hover shows both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.io import atomic_write_json, read_json
from ..core.progress import progress
from ..sae.core import SAE
from ..sae.latents import LATENTS_FILE, latent_stats, save_latent_stats
from .transcoders import MANIFEST, layer_dir

CONTEXTS_SHOWN = 3  # top contexts carried into graph.json per feature


def label_transcoders(model: Any, tokenizer: Any, saes: Sequence[SAE], folder: str | Path, input_ids: torch.Tensor,
                      top_n: int = 8, batch_size: int = 8, quiet: bool = False) -> dict[str, Any]:
    """Label every layer's latents from the contexts `input_ids` [B, T] and write `folder/layer_L/latents.json`
    (the SAE wing's file); the manifest gains `"latents": {...}`. Returns a summary (contexts, tokens, fired)."""
    folder = Path(folder)
    if input_ids.ndim != 2 or input_ids.shape[0] < 1:
        raise ValueError(f"input_ids of shape {tuple(input_ids.shape)}: pass contexts as [n_contexts, context_len]")
    fired = []
    with progress(len(saes), "label transcoder latents", unit="layer", quiet=quiet) as bar:
        for layer, sae in enumerate(saes):
            stats = latent_stats(sae, model, tokenizer, input_ids, top_n=top_n, batch_size=batch_size)
            save_latent_stats(stats, layer_dir(folder, layer))
            fired.append(sum(1 for r in stats["latents"].values() if r["top_contexts"]))
            bar.advance(1)
    summary = {"file": LATENTS_FILE, "contexts": int(input_ids.shape[0]), "context_len": int(input_ids.shape[1]),
               "top_n": top_n, "fired": fired}
    man = folder / MANIFEST
    if man.exists():
        atomic_write_json(man, {**read_json(man), "latents": summary})
    return summary


def feature_labels(folder: str | Path | None, n_contexts: int = CONTEXTS_SHOWN) -> dict[int, dict[int, dict]]:
    """{layer: {feature: {"label", "contexts"}}} from a set's `layer_L/latents.json` files; {} where none exist.

    A context is shown as its text with the firing token in brackets and the activation: `… the capital [ of] (3.2)`.
    """
    out: dict[int, dict[int, dict]] = {}
    if not folder:
        return out
    for p in sorted(Path(folder).glob(f"*/{LATENTS_FILE}")):
        try:
            layer = int(p.parent.name.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        stats = read_json(p)
        out[layer] = {int(j): {"label": rec.get("label", ""),
                               "contexts": [f'{c["context"]}[{c["token"]}] ({c["activation"]:.3g})'
                                            for c in rec.get("top_contexts", [])[:n_contexts]]}
                      for j, rec in stats.get("latents", {}).items()}
    return out


def label_contexts(tokenizer: Any, texts: list[str], n_contexts: int, context_len: int) -> torch.Tensor:
    """The contexts a set is labelled on: `n_contexts` of `context_len` tokens cut from `texts` (the job's corpus:
    `--data`, or the built-in one, as the transcoders are trained)."""
    from ..core.store import make_contexts

    ids = make_contexts(tokenizer, texts, context_len, max_contexts=n_contexts)
    if ids.shape[0] < 1:
        raise ValueError(f"the data gives no context of {context_len} tokens: bring more text (--data) or lower "
                         "--context-len")
    return ids
