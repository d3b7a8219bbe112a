"""A correctness probe at the policy's checks (Zhang et al. 2025, "Reasoning models know when they're right").

At each check of a collected reasoning (a chunk end: the newline, sentence end or every-N token the policy checks),
a 2-layer MLP (`probes.mlp.MLPProbe`: Linear -> GELU -> Linear) reads the residual stream of the token the check
reads (`collect.row_checks`' probe index) and predicts whether the answer forced at that cut is correct
(`label="gold"`, the paper's target) or already equals the full reasoning's final answer (`label="final"`). It is
fitted on the train problems' checks, one per candidate layer, and the layer with the lowest log-loss on the val
problems' checks is kept. An exit fires when P(correct) >= τ and answers with the forced answer at the cut; τ is
calibrated on the val problems by the same rule as every other signal (`calibrate.calibrate`: the loss is the
disagreement with full reasoning, so the guarantee is on agreement whatever the probe was trained to predict).

`exit eval --correctness-probe` adds it as the method "correctness_probe" (offline replay over the collected checks).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..probes.base import make_probe
from ..probes.train import FitConfig
from .collect import Collected, row_checks, row_group
from .evaluate import curve_answers
from .policy import Trace

LABELS = ("gold", "final")
MIN_TRAIN_CHECKS = 8


def correctness_labels(row: dict, cuts: Sequence[int], label: str = "gold") -> list[int]:
    """1 where the forced answer at each cut is the gold answer (`label="gold"`) or the final one (`"final"`)."""
    if label not in LABELS:
        raise ValueError(f"label={label!r}: use 'gold' (is the forced answer correct? the paper's target) or 'final' "
                         "(is it already full reasoning's answer?)")
    cur = curve_answers(row)
    want = row["gold"] if label == "gold" else row["final"]
    return [int(cur[int(c)] == want) for c in cuts]


def check_layers(layers: Sequence[int], collected: Sequence[int]) -> None:
    """Raise a clear error, naming the option, when a candidate layer of the correctness probe was not collected."""
    bad = [int(L) for L in layers if int(L) not in set(collected)]
    if bad:
        raise ValueError(f"--correctness-layers {','.join(map(str, bad))}: layer {bad[0]} was not collected (collected: "
                         f"{sorted(collected)}): pick collected layers, or collect that one (`exit collect --layers`)")


def check_states(col: Collected, idx: Sequence[int], layer: int) -> list[torch.Tensor]:
    """Per problem, the residual stream at `layer` of the token each check reads: `[K_i, D]` float32."""
    check_layers([layer], list(col.acts))
    out = []
    for i in idx:
        js = [j for _, j in row_checks(col, col.rows[i])]
        out.append(col.acts[layer][i, js].float() if js else torch.zeros(0, col.acts[layer].shape[-1]))
    return out


def check_examples(col: Collected, idx: Sequence[int], layer: int, label: str = "gold") -> tuple[torch.Tensor, list[int]]:
    """Every check of the problems `idx` as one example: `[N, D]` states and their 0/1 labels."""
    xs, ys = [], []
    for i, x in zip(idx, check_states(col, idx, layer)):
        r = col.rows[i]
        xs.append(x)
        ys += correctness_labels(r, [c for c, _ in row_checks(col, r)], label)
    D = col.acts[layer].shape[-1]
    return (torch.cat(xs) if xs else torch.zeros(0, D)), ys


def fit_correctness_probe(col: Collected, layer: int, label: str = "gold", hidden: int = 64, seed: int = 0) -> Any:
    """The MLP probe (`make_probe("mlp")`, binary, classes [0, 1]) fitted on the train problems' checks at `layer`."""
    x, y = check_examples(col, col.split("train"), layer, label)
    if len(y) < MIN_TRAIN_CHECKS:
        raise ValueError(f"the correctness probe trains on the collect's train problems' checks, and there are "
                         f"{len(y)} (fewer than {MIN_TRAIN_CHECKS}): collect train problems (--n-train) or leave "
                         "--correctness-probe off")
    probe = make_probe("mlp", pool="last", hidden=hidden)
    probe.fit(x, y, config=FitConfig(weight_decay=1e-2, seed=seed), classes=[0, 1])
    probe.layer, probe.model_id = layer, col.meta.get("model_id")
    return probe


def check_probs(col: Collected, idx: Sequence[int], probe: Any) -> list[np.ndarray]:
    """The probe's P(correct) at each check of each problem."""
    out = []
    for x in check_states(col, idx, probe.layer):
        out.append(probe.predict_proba(x).numpy().astype(float) if len(x) else np.zeros(0))
    return out


def val_log_loss(col: Collected, probe: Any, label: str = "gold") -> float:
    """Mean log-loss of the probe on the val problems' checks (inf without any)."""
    idx = col.split("val")
    p = np.concatenate(check_probs(col, idx, probe) + [np.zeros(0)])
    y = np.array([v for i in idx for v in correctness_labels(col.rows[i], [c for c, _ in row_checks(col, col.rows[i])],
                                                             label)], dtype=float)
    if not len(y):
        return math.inf
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def choose_correctness_probe(col: Collected, layers: Sequence[int] = (), label: str = "gold", hidden: int = 64,
                             seed: int = 0) -> tuple[Any, dict[str, float]]:
    """One probe per candidate layer (default: every collected one); the one with the lowest val log-loss, and each
    layer's val log-loss."""
    layers = list(layers) or sorted(col.acts)
    check_layers(layers, list(col.acts))
    best, scores = None, {}
    for L in layers:
        p = fit_correctness_probe(col, L, label, hidden, seed)
        scores[str(L)] = round(val_log_loss(col, p, label), 4)
        if best is None or scores[str(L)] < scores[str(best.layer)]:
            best = p
    assert best is not None
    return best, scores


def correctness_traces(col: Collected, idx: Sequence[int], probe: Any) -> list[Trace]:
    """Checks with the probe's P(correct) as the confidence; the answer at an exit is the forced answer at the cut."""
    out = []
    for i, conf in zip(idx, check_probs(col, idx, probe)):
        r = col.rows[i]
        cur = curve_answers(r)
        cuts = np.array([c for c, _ in row_checks(col, r)], dtype=int)
        out.append(Trace(r["id"], r["split"], r["gold"], r["final"], r["cut"], cuts, conf,
                         [cur[int(c)] for c in cuts], row_group(r)))
    return out
