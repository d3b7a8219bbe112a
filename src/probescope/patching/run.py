"""`run_patching`: exact and attribution patching grids for one model and one task, into a run folder with heat maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.options import ModelOptions, RunOptions, option
from ..report.job import open_job
from .core import FAMILIES, PatchGrid, activation_patching, agreement, attribution_patching, logit_diff


@dataclass
class PatchConfig(ModelOptions, RunOptions):
    """Activation and attribution patching: clean vs corrupted prompts, normalised effect per site × position/head."""

    task: str = option("ioi", "ioi (generated indirect-object pairs) or a JSONL/CSV file with clean, corrupt, answer, "
                              "wrong")
    families: str = option("resid_pre,attn_head,mlp_out", "comma-separated site families, e.g. resid_pre,attn_head",
                           choices=FAMILIES, sep=",", nonempty="use some of " + ", ".join(FAMILIES))
    method: str = option("both", "exact | attribution | both", choices=("exact", "attribution", "both"))
    n_prompts: int = option(8, "prompt pairs (generated tasks)", min=1)
    align: str = option("exact", "exact (equal token lengths) | left (left-pad to line up the last tokens)",
                        choices=("exact", "left"))
    batch_size: int = option(64, "rows per forward in exact patching", min=1)
    out: str = option("runs/patch", "run folder: grids.json, metrics.json, report.html")

    @property
    def family_list(self) -> list[str]:
        return [f.strip() for f in self.families.split(",") if f.strip()]


def load_pairs(cfg: PatchConfig, tokenizer: Any):
    from .tasks import ioi_texts, read_pairs, tokenize_pairs

    texts = ioi_texts(cfg.n_prompts, cfg.seed, tokenizer) if cfg.task == "ioi" else read_pairs(cfg.task)
    pairs = tokenize_pairs(tokenizer, texts, cfg.align)
    for i, (a, w) in enumerate(zip(pairs.answer_ids, pairs.wrong_ids)):
        if a == w:  # logit[answer] - logit[wrong] is 0 on every prompt, patched or not: nothing can be measured
            raise ValueError(f"{cfg.task}: pair {i + 1}: answer {texts[i][2]!r} and wrong {texts[i][3]!r} are the same "
                             "token, so the metric logit[answer] − logit[wrong] is 0 on every prompt, clean or "
                             "corrupted; give as wrong the token the corrupted prompt leads to (e.g. the other name)")
    return pairs


def heatmap_spec(grid: PatchGrid, title: str) -> dict:
    """The grid on a diverging scale centred at 0: a cell that hurts the answer is as visible as one that helps."""
    cols = "head" if grid.family == "attn_head" else ("token position" if len(grid.cols) > 1 else "")
    return {"type": "heatmap", "title": title, "rows": grid.rows, "cols": grid.cols, "signed": True,
            "values": np.round(grid.values, 4).tolist(), "fmt": ".2f", "y_label": "layer",
            "x_label": cols or "whole layer", "value_label": "effect (share of the clean − corrupted gap restored)"}


def run_patching(cfg: PatchConfig, model: Any = None, tokenizer: Any = None) -> dict:
    """Every requested grid, exact and/or attribution, their agreement and timings; writes the run folder."""
    from ..core.models import model_id

    with open_job(cfg, "patching", model, tokenizer) as job:
        model, tokenizer = job.model, job.tokenizer
        pairs = load_pairs(cfg, tokenizer)
        metric = logit_diff(pairs.answer_ids, pairs.wrong_ids)
        tokens = pairs.tokens(tokenizer)
        run = job.run
        run.write_config(cfg)
        grids: dict[str, dict] = {}
        summary: dict[str, Any] = {"model": model_id(model), "n_prompts": int(pairs.clean.shape[0]),
                                   "tokens": int(pairs.clean.shape[1]), "families": {}}
        plots = []
        for fam in cfg.family_list:
            kw = dict(attention_mask=pairs.attention_mask)
            row: dict[str, Any] = {}
            ex = at = None
            if cfg.method in ("exact", "both"):
                ex = activation_patching(model, pairs.clean, pairs.corrupt, metric, fam, batch_size=cfg.batch_size, **kw)
                grids[f"{fam}/exact"] = ex.to_dict()
                row.update(exact_seconds=ex.seconds, exact_forwards=ex.forwards, clean_metric=ex.clean_metric,
                           corrupt_metric=ex.corrupt_metric, top_cell=_top(ex))
                plots.append(heatmap_spec(_with_tokens(ex, tokens), f"{fam}: exact patching (normalised effect)"))
            if cfg.method in ("attribution", "both"):
                at = attribution_patching(model, pairs.clean, pairs.corrupt, metric, fam, **kw)
                grids[f"{fam}/attribution"] = at.to_dict()
                row.update(attribution_seconds=at.seconds)
                plots.append(heatmap_spec(_with_tokens(at, tokens), f"{fam}: attribution patching (first-order)"))
            if ex is not None and at is not None:
                row["agreement"] = agreement(ex, at)
                row["speedup"] = ex.seconds / at.seconds if at.seconds > 0 else None
            summary["families"][fam] = row
        summary["pair_example"] = list(pairs.texts[0])
        run.write_metrics({**summary, "plots": plots}, report=False)
        from ..core.io import atomic_write_json

        atomic_write_json(run.path / "grids.json", grids)
    return {"run_dir": str(run.path), **summary}


def _with_tokens(grid: PatchGrid, tokens: list[str]) -> PatchGrid:
    """Column labels as the clean prompt's tokens where the columns are positions."""
    if grid.cols and grid.cols[0].isdigit() and len(grid.cols) == len(tokens):
        from dataclasses import replace

        return replace(grid, cols=[f"{i}:{t.strip() or '␣'}" for i, t in enumerate(tokens)])
    return grid


def _top(grid: PatchGrid) -> dict:
    i, j = np.unravel_index(int(np.argmax(np.abs(grid.values))), grid.values.shape)
    return {"row": grid.rows[i], "col": grid.cols[j], "effect": float(grid.values[i, j])}
