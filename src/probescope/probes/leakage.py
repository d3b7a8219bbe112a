"""Leakage filters (Boxo, Neelappa & Raval 2025, "Linear probes rely on textual evidence"): train and score a probe
with the tokens that verbalise the behaviour taken away, and report AUROC with and without.

  content filter  the spans that state the behaviour (given per example, or found by a keyword list) are
                  `mask`ed (the model reads them, the probe does not see their positions) or `drop`ped (cut from
                  the text before the forward: the model never reads them)
  score filter    examples a text-only classifier (TF-IDF + logistic, out-of-fold) already separates with
                  confidence >= a threshold are dropped: what is left is what the text alone does not give away

Spans are character offsets `[start, end)` into the text; one outside the text is refused, naming the example.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

Span = tuple[int, int]


def check_spans(texts: Sequence[str], spans: Sequence[Sequence[Sequence[int]]]) -> list[list[Span]]:
    """Spans as sorted, merged `(start, end)` pairs; refuses a span outside its text or empty, naming it."""
    if len(spans) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(spans)} span lists: give one list (maybe empty) per text")
    out = []
    for i, (t, ss) in enumerate(zip(texts, spans)):
        got: list[Span] = []
        for s in ss or []:
            if len(s) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in s):
                raise ValueError(f"text {i}: span {list(s)!r} is not [start, end] (two integer character offsets)")
            a, b = int(s[0]), int(s[1])
            if not 0 <= a < b <= len(t):
                raise ValueError(f"text {i}: span [{a}, {b}) lies outside the text (length {len(t)}): spans are "
                                 f"character offsets with 0 <= start < end <= {len(t)}")
            got.append((a, b))
        merged: list[Span] = []
        for a, b in sorted(got):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        out.append(merged)
    return out


def keyword_spans(texts: Sequence[str], keywords: Sequence[str]) -> list[list[Span]]:
    """Spans of every whole-word, case-insensitive match of a keyword (or phrase) in each text."""
    kws = [k.strip() for k in keywords if k.strip()]
    if not kws:
        raise ValueError("no keywords: give at least one word or phrase that verbalises the behaviour")
    pat = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in sorted(kws, key=len, reverse=True)) + r")\b", re.I)
    return check_spans(texts, [[(m.start(), m.end()) for m in pat.finditer(t)] for t in texts])


def drop_spans(text: str, spans: Sequence[Span]) -> str:
    """The text with the spans cut out (and the doubled spaces a cut leaves closed up)."""
    parts, last = [], 0
    for a, b in spans:
        parts.append(text[last:a])
        last = b
    parts.append(text[last:])
    out = re.sub(r"[ \t]{2,}", " ", "".join(parts)).strip()
    return out


def span_token_mask(tokenizer: Any, texts: Sequence[str], spans: Sequence[Sequence[Span]], T: int,
                    max_length: int | None = None) -> torch.Tensor:
    """`[N, T]` bool, True at the tokens that overlap a span (padding as the tokenizer pads, to width `T`)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("masking spans needs a fast tokenizer (character offsets); use --filter drop instead")
    out = torch.zeros(len(texts), T, dtype=torch.bool)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for i, (t, ss) in enumerate(zip(texts, spans)):
        kw: dict[str, Any] = {"return_offsets_mapping": True}
        if max_length:
            kw.update(truncation=True, max_length=max_length)
        offs = tokenizer(t, **kw)["offset_mapping"]
        n = len(offs)
        if n > T:
            raise ValueError(f"text {i} has {n} tokens but the activations {T} positions: tokenize as featurize did")
        base = T - n if left else 0
        for j, (a, b) in enumerate(offs):
            if b > a and any(a < e and s < b for s, e in ss):
                out[i, base + j] = True
    return out


def content_filter(acts: Any, tokenizer: Any, texts: Sequence[str], spans: Sequence[Sequence[Span]],
                   max_length: int | None = None) -> Any:
    """`Acts` whose mask leaves out the tokens of the spans (`mask` filter). An example left with no token is
    refused, naming it."""
    from .data import Acts

    hit = span_token_mask(tokenizer, texts, spans, acts.x.shape[1], max_length)
    mask = acts.mask & ~hit
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"examples {empty[:10]} are all span: nothing is left to probe; drop them or give shorter spans")
    return Acts(acts.x, mask, acts.model_id, acts.layer)


def text_scores(texts: Sequence[str], labels: Sequence[int], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(label = 1) of a text-only classifier: TF-IDF of words and word pairs + logistic regression
    (C = 100)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    y = np.asarray(labels, dtype=int)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"all {len(y)} labels are {int(y[0]) if len(y) else None}: the text-only classifier needs two "
                         "classes; add examples of the other class")
    k = min(folds, int(np.bincount(y).min()))
    if k < 2:
        raise ValueError("the text-only classifier needs at least 2 examples of each class")
    # C = 100: nearly unregularised, so a text that gives the label away gets a confident probability (at the
    # default C = 1 TF-IDF features give soft ones: a separable set (AUROC 0.999) had none above 0.9)
    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1), LogisticRegression(C=100.0, max_iter=5000))
    return cross_val_predict(clf, list(texts), y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                             method="predict_proba")[:, 1]


def score_filter(texts: Sequence[str], labels: Sequence[int], threshold: float = 0.9, folds: int = 5,
                 seed: int = 0) -> dict[str, Any]:
    """Indices of the examples the text-only classifier does NOT separate with confidence >= `threshold` (its
    out-of-fold probability of the true label), and its AUROC."""
    from .metrics import binary_auroc

    if not 0.5 < threshold <= 1:
        raise ValueError(f"threshold={threshold}: give a confidence in (0.5, 1]")
    y = np.asarray(labels, dtype=int)
    p = text_scores(texts, y, folds, seed)
    conf_true = np.where(y == 1, p, 1 - p)
    keep = [int(i) for i in np.nonzero(conf_true < threshold)[0]]
    return {"keep": keep, "dropped": int(len(y) - len(keep)), "text_auroc": binary_auroc(p, y), "scores": p}


# ------------------------------------------------------------------------------------------------- the job


def _spans_for(cfg: Any, ds: Any) -> list[list[Span]]:
    if cfg.keywords:
        return keyword_spans(ds.texts, cfg.keywords)
    if cfg.data.data:
        from ..core.data.readers import read_records

        rows = read_records(cfg.data.data)
        if rows and "spans" in rows[0]:
            import json

            raw = [r.get("spans") or [] for r in rows]
            raw = [json.loads(s) if isinstance(s, str) else s for s in raw]
            return check_spans(ds.texts, raw)
    raise ValueError("no spans: pass --keywords WORD (repeatable) or a data file with a 'spans' column "
                     "([[start, end], ...] character offsets into 'text')")


def leakage_rows(model: Any, tok: Any, ds: Any, spans: list[list[Span]], layer: int, kinds: Sequence[str],
                 filter: str, threshold: float, fit: Any, dc: Any, domain: str | None = None) -> dict[str, Any]:
    """Per kind: test AUROC at baseline, content-filtered (`filter` mask | drop) and score-filtered; `dc` is the
    DataConfig (max_length, batch_size, seed, threads)."""
    from .data import ProbeDataset
    from .runner import _acts, _fit, indices, score_sets

    acts = _acts(model, tok, ds, [layer], dc)[layer]
    if filter == "mask":
        filtered = content_filter(acts, tok, ds.texts, spans, dc.max_length)
    elif filter == "drop":
        cut = ProbeDataset([drop_spans(t, s) or "." for t, s in zip(ds.texts, spans)], ds.labels, ds.domains,
                           ds.splits, ds.name)
        filtered = _acts(model, tok, cut, [layer], dc)[layer]
    else:
        raise ValueError(f"filter={filter!r}: use mask or drop")
    if len(ds.classes) != 2:
        raise ValueError(f"the score filter needs a binary task; '{ds.name}' has classes {ds.classes}")
    y01 = [int(v == ds.classes[1]) for v in ds.labels]
    sf = score_filter(ds.texts, y01, threshold, seed=dc.seed)
    keep = sorted(sf["keep"])
    kept = ds.select(keep) if keep else None
    rows = []
    for spec in kinds:
        r: dict[str, Any] = {"kind": spec}
        for name, a in (("baseline", acts), ("content_filtered", filtered)):
            probe = _fit(spec, a, ds, domain, fit, dc.seed, None, dc.threads)
            r[name] = score_sets(probe, a, ds, {"test": ("test", domain)}, None)[0]["test"]["auroc"]
        r["score_filtered"] = None
        if kept is None or len(set(kept.labels)) < 2:
            r["score_filtered_note"] = "the text-only classifier separates every example of a class: nothing left"
        else:
            try:
                indices(kept, "test", domain)
                probe = _fit(spec, acts[keep], kept, domain, fit, dc.seed, None, dc.threads)
                r["score_filtered"] = score_sets(probe, acts[keep], kept, {"test": ("test", domain)}, None)[0]["test"]["auroc"]
            except ValueError as e:  # too few of a class left in a split
                r["score_filtered_note"] = str(e)
        rows.append(r)
    return {"filter": filter, "n_spans": sum(len(s) for s in spans), "n_examples": len(ds),
            "examples_with_spans": sum(bool(s) for s in spans), "text_only_auroc": sf["text_auroc"],
            "score_filter_dropped": sf["dropped"], "threshold": threshold, "rows": rows}


def run_leakage(cfg: Any, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """The job behind `probescope probe leakage`."""
    import dataclasses

    from ..report.job import open_job
    from .runner import _precheck, _rundir, load_data, mixing, resolve_layer

    _precheck(cfg.out, "leakage")
    with open_job(cfg.data, None, model, tokenizer) as job:
        model, tok = job.model, job.tokenizer
        ds = load_data(cfg.data)
        spans = _spans_for(cfg, ds)
        layer = resolve_layer(model, cfg.layer)
        _precheck(cfg.out, "leakage", dataclasses.replace(cfg, layer=layer))
        res = {"layer": layer, **leakage_rows(model, tok, ds, spans, layer, cfg.kinds, cfg.filter, cfg.threshold, cfg.fit,
                                              cfg.data, cfg.domain), "mixed_domains": mixing(ds, cfg.domain)}
        run = _rundir(cfg.out, "leakage")
        run.write_config(dataclasses.replace(cfg, layer=layer))
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res
