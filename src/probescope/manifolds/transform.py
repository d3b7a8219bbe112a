"""What transforms the manifold (issue #32 item 4): on "+k" prompts ("3 days from Monday is"), which heads and MLPs
carry the start value to the answer, and in what form the answer is held where it is read out.

Two measurements, each beside a baseline:

* **Components.** Activation patching (patching wing, exact) of every attention head (`attn_head.L.H`) and every
  MLP (`mlp_out.L`): the clean prompt has start value x, the corrupted one x+1 with the same template and k; the
  metric is logit[answer(x)] − logit[answer(x+1)] at the last token. The pairs are split into folds and each
  component's normalised effect is reported as the mean over folds with a 95% t-interval.
* **Form of the answer** (the counterpoint, Feucht et al. 2026: month arithmetic done as base-10 addition, not by
  rotating the circle). At the last token of every layer, and in the output of the top heads, four hypotheses are
  scored by the held-out R² of a linear read-out (`geometry.scores`, two folds with every value in both) beside
  the same read-out with the values shuffled (95th percentile): the answer as a point on the circle (cos, sin of
  (x + k) mod P), the start on its circle, the offset k, and the unwrapped sum x + k on a line. Each is also read
  out from the **additive control** — one-hot(x) ⊕ one-hot(k), what a site that holds the start and the offset
  separately, and nothing computed from them, gives: the unwrapped sum is a linear function of it (control R² ≈ 1),
  the answer's circle is not. So "rotation" (the answer computed and held on its circle) needs the answer circle
  read out above its shuffled 95th percentile and above the control; the sum's read-out is evidence of addition
  only by what it gains over its control (reported, never a verdict alone).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.progress import progress
from .geometry import layer_report, probe_r2, two_folds
from .move import Prompt

HYPOTHESES = ("answer_circle", "start_circle", "offset", "sum_line")


def hypothesis_values(prompts: Sequence[Prompt], period: int) -> dict[str, tuple[np.ndarray, int | None]]:
    """Per hypothesis: (value per prompt, period or None for a line)."""
    x = np.array([p.value for p in prompts])
    k = np.array([p.offset for p in prompts])
    return {"answer_circle": ((x + k) % period, period), "start_circle": (x, period), "offset": (k, None),
            "sum_line": (x + k, None)}


def _usable(v: np.ndarray, min_per_value: int = 2) -> np.ndarray:
    """Rows whose value has at least `min_per_value` examples (the two-fold read-out needs every value twice)."""
    vals, counts = np.unique(v, return_counts=True)
    ok = set(vals[counts >= min_per_value].tolist())
    return np.array([u in ok for u in v.tolist()])


def additive_control(prompts: Sequence[Prompt], period: int) -> np.ndarray:
    """one-hot(x) ⊕ one-hot(k) per prompt: a site holding the start and the offset separately, nothing more."""
    x = np.array([p.value for p in prompts])
    k = np.array([p.offset for p in prompts])
    ks = sorted(set(k.tolist()))
    F = np.zeros((len(prompts), period + len(ks)))
    F[np.arange(len(x)), x] = 1.0
    F[np.arange(len(x)), period + np.searchsorted(ks, k)] = 1.0
    return F


def form_scores(X: np.ndarray, prompts: Sequence[Prompt], period: int, k: int, n_shuffles: int,
                seed: int = 0) -> dict[str, dict[str, float] | None]:
    """Held-out read-out R² of each hypothesis at activations X [N, d] (one row per prompt), beside shuffles and
    the additive control; None for a hypothesis with fewer than 3 usable values (e.g. the offset when k = 1)."""
    out: dict[str, dict[str, float] | None] = {}
    F = additive_control(prompts, period)
    for name, (v, per) in hypothesis_values(prompts, period).items():
        keep = _usable(v)
        if len(np.unique(v[keep])) < 3:
            out[name] = None
            continue
        r = layer_report(X[keep].astype(np.float64), v[keep], per, k, n_shuffles, seed)
        vk = v[keep]
        th = 2 * np.pi * vk / (per or 1)
        Y = np.stack([np.cos(th), np.sin(th)], 1) if per else vk[:, None].astype(float)
        control = probe_r2(F[keep], Y, two_folds(vk, np.random.default_rng(seed)))
        out[name] = {"probe": float(r["probe"]), "probe_p95": float(r["baseline_p95"]["probe"]),
                     "control": float(control), "r2": float(r["r2_plane"] if per else r["r2"]), "n": int(keep.sum())}
    return out


MARGIN = 0.1  # read-out R² a hypothesis must gain over its additive control to count as computed


def verdict(form: dict[str, dict[str, float] | None]) -> str:
    """Rotation (the answer held on its circle, beyond the start and offset held separately) or not computed here,
    in words, from one layer's `form_scores`. The unwrapped sum is reported beside its control, never as evidence
    alone: it is a linear function of a start and an offset held separately."""
    a, s = form.get("answer_circle"), form.get("sum_line")
    st, off = form.get("start_circle"), form.get("offset")
    if a is None:
        return "no answer circle to score"
    if a["probe"] > a["probe_p95"] and a["probe"] > a["control"] + MARGIN:
        return (f"rotation: the answer is held as a point on its circle (read-out R² {a['probe']:.2f}; shuffled "
                f"{a['probe_p95']:.2f}, start and offset held separately {a['control']:.2f})")
    held = [f"{n} {d['probe']:.2f}" for n, d in (("start", st), ("offset", off)) if d and d["probe"] > d["probe_p95"]]
    if s is not None:
        held.append(f"unwrapped sum {s['probe']:.2f} (start and offset alone give {s['control']:.2f})")
    return ("not computed here: the answer's circle is not read out (R² "
            f"{a['probe']:.2f}, shuffled {a['probe_p95']:.2f})" + (f"; held: {', '.join(held)}" if held else ""))


def answer_tokens(names_ids: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(shared prefix, first token after it per name): the prompt is scored after the tokens every answer starts
    with (a byte tokenizer's ' '), on the first token where the names part."""
    c = 0
    while all(len(t) > c + 1 for t in names_ids) and len({t[c] for t in names_ids}) == 1:
        c += 1
    return list(names_ids[0][:c]), [t[c] for t in names_ids]


def prompt_ids(tokenizer: Any, prompts: Sequence[Prompt], suffix: Sequence[int] = ()) -> list[list[int]]:
    """Token ids of every prompt, followed by the answers' shared prefix `suffix`."""
    return [list(tokenizer(p.text, add_special_tokens=True)["input_ids"]) + list(suffix) for p in prompts]


def contrast_pairs(ids: Sequence[Sequence[int]], prompts: Sequence[Prompt], answers: Sequence[int],
                   period: int) -> list[tuple[int, int]]:
    """(clean, corrupt) prompt indices: the corrupt one has start x + 1 (same template and k), as many tokens, and
    another answer token (a pair whose two answers share their scored token carries no signal)."""
    where = {(p.template, p.offset, p.value): i for i, p in enumerate(prompts)}
    pairs = []
    for i, p in enumerate(prompts):
        j = where.get((p.template, p.offset, (p.value + 1) % period))
        if j is not None and len(ids[i]) == len(ids[j]) and answers[i] != answers[j]:
            pairs.append((i, j))
    return pairs


def _tokens(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    from ..core.capture import left_pad
    from ..core.tokens import pad_id

    return left_pad(list(seqs), pad_id(tokenizer))


def last_token_acts(model: Any, tokenizer: Any, seqs: Sequence[Sequence[int]], sites: Sequence[Any],
                    batch_size: int) -> dict[Any, np.ndarray]:
    """Activations at the last token of every prompt, per site (head sites: the head's share of attn_out)."""
    from ..core.sites import read_sites

    out: dict[Any, list[np.ndarray]] = {s: [] for s in sites}
    for b in range(0, len(seqs), batch_size):
        ids, mask = _tokens(tokenizer, seqs[b: b + batch_size])
        acts = read_sites(model, ids, mask, list(sites))
        for s in sites:
            out[s].append(acts[s][:, -1].float().cpu().numpy())
    return {s: np.concatenate(v) for s, v in out.items()}


def answer_metric(answers: Sequence[int]) -> Callable[[Sequence[tuple[int, int]]], Any]:
    """The metric of a fold of (clean, corrupt) pairs: logit[clean's answer] − logit[corrupt's answer]."""
    from ..patching.core import logit_diff

    return lambda fold: logit_diff([answers[i] for i, _ in fold], [answers[j] for _, j in fold])


def component_effects(model: Any, tokenizer: Any, seqs: Sequence[Sequence[int]], pairs: Sequence[tuple[int, int]],
                      metric_for: Callable[[Sequence[tuple[int, int]]], Any], folds: int, batch_size: int,
                      seed: int = 0) -> dict[str, Any]:
    """Per head and per MLP: normalised patching effect, mean over `folds` disjoint folds of pairs, 95% t-interval.
    `metric_for(fold)` gives the patching metric of a fold's pairs (e.g. `answer_metric(answers)`)."""
    from scipy import stats

    from ..patching.core import activation_patching

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    groups = [g for g in np.array_split(order, min(folds, len(pairs))) if len(g)]
    grids: dict[str, list[np.ndarray]] = {"attn_head": [], "mlp_out": []}
    gaps: list[float] = []
    labels: dict[str, tuple[list[str], list[str]]] = {}
    with progress(len(groups) * 2, "patching heads and MLPs", unit="grid") as bar:
        for g in groups:
            ids_c, mask = _tokens(tokenizer, [seqs[pairs[i][0]] for i in g])
            ids_x, mask_x = _tokens(tokenizer, [seqs[pairs[i][1]] for i in g])
            if not torch.equal(mask, mask_x):
                raise ValueError("clean and corrupted prompts of a fold differ in length: this is a bug (pairs are "
                                 "chosen with equal token counts)")
            metric = metric_for([pairs[i] for i in g])
            for fam in grids:
                grid = activation_patching(model, ids_c, ids_x, metric, fam, attention_mask=mask,
                                           batch_size=batch_size)
                grids[fam].append(grid.values)
                labels[fam] = (grid.rows, grid.cols)
                if fam == "attn_head":
                    gaps.append(grid.clean_metric - grid.corrupt_metric)
                bar.advance()
    # the gap every effect is a share of: logit[answer(x)] − logit[answer(x + 1)], clean minus corrupted, per fold
    out: dict[str, Any] = {"n_pairs": len(pairs), "n_folds": len(groups), "gap": float(np.mean(gaps)),
                           "gap_folds": [float(g) for g in gaps]}
    for fam, vals in grids.items():
        V = np.stack(vals)  # [folds, rows, cols]
        mean = V.mean(0)
        half = (stats.t.ppf(0.975, len(V) - 1) * V.std(0, ddof=1) / np.sqrt(len(V))) if len(V) > 1 else np.full_like(
            mean, np.nan)
        out[fam] = {"rows": labels[fam][0], "cols": labels[fam][1], "mean": mean.tolist(),
                    "lo": (mean - half).tolist(), "hi": (mean + half).tolist()}
    return out


def top_components(effects: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The `n` components with the largest |mean effect|, heads and MLPs together."""
    items = []
    for fam in ("attn_head", "mlp_out"):
        e = effects[fam]
        for i, r in enumerate(e["rows"]):
            for j, c in enumerate(e["cols"]):
                L = int(r[1:])
                site = f"attn_head.{L}.{int(c[1:])}" if fam == "attn_head" else f"mlp_out.{L}"
                items.append({"site": site, "layer": L, "effect": e["mean"][i][j], "lo": e["lo"][i][j],
                              "hi": e["hi"][i][j]})
    items.sort(key=lambda d: -abs(d["effect"]))
    return items[:n]
