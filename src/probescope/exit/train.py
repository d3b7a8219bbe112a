"""`probescope exit train`: an attention probe that predicts the model's OWN final answer from a reasoning prefix.

Training examples are prefixes cut at random lengths (`cuts_per_seq` per sequence, plus the whole sequence),
labelled with the answer the model gives after its full reasoning (cross-entropy over the four letters). One
probe per candidate layer; the layer with the lowest validation log-loss at the policy's checkpoints wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .answer import LETTERS
from ..core.io import atomic_write_json
from ..core.options import RunOptions, option
from ..report.job import open_job
from ..probes.attention import AttentionProbe
from ..probes.train import FitConfig
from .collect import Collected, is_free, load_collected, row_checks
from .free import STABILITY_CLASSES, class_probs, stability_examples, stability_labels


@dataclass
class TrainConfig(RunOptions):
    """Attention probe on random reasoning prefixes -> the model's own final answer; layer chosen on val.

    Candidate layers (empty: all collected), prefixes per sequence, probe and fit options."""

    collect: str = option("runs/exit-collect", "an `exit collect` run folder")
    out: str = option("runs/exit-probe", "run folder: probe.safetensors, layers.json, report.html")
    layers: list[int] = option(list, "candidate layers (default: every collected one)")
    cuts_per_seq: int = option(4, "random prefix cuts per reasoning (plus the whole)", min=0)
    n_heads: int = option(4, "attention heads of the probe", min=1)
    weight_decay: float = option(1e-3, "AdamW weight decay", min=0)
    max_epochs: int = option(30, "training epochs at most (early stopping on val)", min=1)
    patience: int = option(4, "epochs without val improvement before stopping", min=1)
    lr: float = option(5e-3, "learning rate", gt=0)
    quiet: bool | None = option(None, cli=False)


def prefix_examples(acts: torch.Tensor, lengths: torch.Tensor, labels: list[str], cuts_per_seq: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Each sequence repeated `cuts_per_seq` + 1 times with a prefix mask (random lengths, then the whole)."""
    g = torch.Generator().manual_seed(seed)
    xs, ms, ys = [], [], []
    T = int(lengths.max())
    ar = torch.arange(T)
    for i in range(len(acts)):
        n = int(lengths[i])
        if n == 0:
            continue
        ks = torch.randint(1, n + 1, (cuts_per_seq,), generator=g).tolist() + [n]
        for k in ks:
            xs.append(acts[i, :T])
            ms.append(ar < k)
            ys.append(labels[i])
    return torch.stack(xs), torch.stack(ms), ys


def fit_exit_probe(col: Collected, layer: int, cfg: TrainConfig) -> AttentionProbe:
    """Train one attention probe on the train split's prefixes at `layer`: the final answer's letter, or for
    free-form answers the stability of the forced answer at each check (`probescope.exit.free`)."""
    idx = [i for i in col.split("train") if col.lengths[i] > 0]
    if len(idx) < 8:
        raise ValueError(f"only {len(idx)} train problems with reasoning: collect more (--n-train)")
    x = col.acts[layer][idx].float()
    if is_free(col):  # the answer-stability probe: is the forced answer at this prefix already the final one?
        X, M, Y = stability_examples(x, col.lengths[idx], [col.rows[i] for i in idx],
                                     [row_checks(col, col.rows[i]) for i in idx])
        classes = list(STABILITY_CLASSES)
    else:
        labels = [col.rows[i]["final"] for i in idx]
        X, M, Y = prefix_examples(x, col.lengths[idx], labels, cfg.cuts_per_seq, cfg.seed)
        classes = list(LETTERS)
    probe = AttentionProbe(n_heads=cfg.n_heads)
    probe.layer, probe.model_id = layer, col.meta.get("model_id")
    fc = FitConfig(weight_decay=cfg.weight_decay, max_epochs=cfg.max_epochs, patience=cfg.patience, lr=cfg.lr,
                   class_weight=None, seed=cfg.seed)
    probe.fit(X, Y, M, config=fc, classes=classes)
    probe.layer, probe.model_id = layer, col.meta.get("model_id")
    return probe


@torch.no_grad()
def checkpoint_probs(col: Collected, probe: Any, idx: list[int], layer: int | None = None) -> list[torch.Tensor]:
    """The probe's letter probabilities at each newline checkpoint of each problem (via `predict_prefixes`)."""
    layer = probe.layer if layer is None else layer
    keep = [i for i in idx if col.lengths[i] > 0]
    out: dict[int, torch.Tensor] = {}
    for s in range(0, len(keep), 64):
        part = keep[s: s + 64]
        T = int(col.lengths[part].max())
        x = col.acts[layer][part, :T].float()
        m = torch.arange(T).unsqueeze(0) < col.lengths[part].unsqueeze(1)
        P = class_probs(probe, probe.predict_prefixes(x, m))
        for j, i in enumerate(part):
            r = col.rows[i]
            cps = row_checks(col, r)
            out[i] = P[j, [pi for _, pi in cps]] if cps else torch.zeros(0, len(probe.classes))
    return [out.get(i, torch.zeros(0, len(probe.classes))) for i in idx]


def val_score(col: Collected, probe: Any) -> dict[str, float]:
    """Mean log-loss and accuracy (vs the final answer; free-form: vs the stability labels) over all validation
    checkpoints."""
    idx = col.split("val")
    nll, acc, n = 0.0, 0.0, 0
    for i, P in zip(idx, checkpoint_probs(col, probe, idx)):
        r = col.rows[i]
        y = (torch.tensor([STABILITY_CLASSES.index(v) for v in stability_labels(r, row_checks(col, r))], dtype=torch.long)
             if is_free(col) else LETTERS.index(r["final"]))
        if len(P):
            if is_free(col):
                nll += float(-(P.gather(1, y[:, None]).clamp_min(1e-9)).log().sum())
                acc += float((P.argmax(-1) == y).sum())
                n += len(P)
                continue
            nll += float(-(P[:, y].clamp_min(1e-9)).log().sum())
            acc += float((P.argmax(-1) == y).sum())
            n += len(P)
    return {"val_nll": nll / max(1, n), "val_acc": acc / max(1, n), "val_checkpoints": n}


def run_train(cfg: TrainConfig, *, quiet: bool | None = None) -> dict:
    """Train a probe per candidate layer (with `cfg.threads` torch threads), keep the best on validation, save it to
    `cfg.out`; returns what layers.json holds: the chosen layer and every layer's validation scores."""
    from ..core.progress import progress

    quiet = cfg.quiet if quiet is None else quiet
    col = load_collected(cfg.collect)
    layers = cfg.layers or sorted(col.acts)
    missing = [L for L in layers if L not in col.acts]
    if missing:
        raise ValueError(f"layers {missing} were not collected (collected: {sorted(col.acts)}): collect them first")
    if not col.split("val"):
        raise ValueError("the collect run has no val split: the layer is chosen on validation (--n-val > 0)")
    scores, best, best_probe = {}, math.inf, None
    with open_job(cfg, "exit-probe") as job, progress(len(layers), "probe per layer", unit="layer", quiet=quiet) as bar:
        for L in layers:
            probe = fit_exit_probe(col, L, cfg)
            s = val_score(col, probe)
            scores[str(L)] = s
            if s["val_nll"] < best:
                best, best_probe = s["val_nll"], probe
            bar.advance(1)
            bar.note(layer=L, nll=s["val_nll"])
        run = job.run
    assert best_probe is not None
    best_probe.fit_info = {**best_probe.fit_info, "exit_layer_scores": scores, "exit_config": asdict(cfg)}
    out = Path(cfg.out)
    best_probe.save(out)
    info = {"chosen": best_probe.layer, "scores": scores}
    atomic_write_json(out / "layers.json", info)
    run.write_config(cfg)
    ls = sorted(scores, key=int)
    run.write_metrics({"chosen_layer": best_probe.layer, "scores": scores, "plots": [
        {"type": "bar", "title": "Probe validation loss by layer (lowest is kept)", "x_label": "layer",
         "y_label": "val NLL vs the model's own answer", "labels": [f"L{L}" for L in ls],
         "values": [scores[L]["val_nll"] for L in ls]},
        {"type": "bar", "title": "Probe validation accuracy by layer (prefix checkpoints)", "x_label": "layer",
         "y_label": "val accuracy", "labels": [f"L{L}" for L in ls], "values": [scores[L]["val_acc"] for L in ls]}]})
    return info
