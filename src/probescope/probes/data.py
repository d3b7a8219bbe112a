"""Probe datasets (texts, labels, domains, splits), label checks, and activations tagged with their source."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..core.data.readers import read_records

SPLITS = ("train", "val", "test")


@dataclass
class Acts:
    """Activations `x` ([N, T, D], or [N, D] for one vector per example) with their token mask and source.

    `model_id` and `layer` let a probe refuse activations from another model or layer.
    """

    x: torch.Tensor
    mask: torch.Tensor | None = None
    model_id: str | None = None
    layer: int | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx: Any) -> "Acts":
        idx = torch.as_tensor(idx) if not isinstance(idx, slice) else idx
        return Acts(self.x[idx], None if self.mask is None else self.mask[idx], self.model_id, self.layer)


def as_seq(x: torch.Tensor | Acts, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(`[N, T, D]` float activations, `[N, T]` bool mask) from a tensor or `Acts`; [N, D] becomes T = 1."""
    if isinstance(x, Acts):
        x, mask = x.x, x.mask if mask is None else mask
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"activations must be a tensor or Acts, got {type(x).__name__}")
    if x.dim() == 2:
        x = x.unsqueeze(1)
        mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.reshape(-1, 1)
    if x.dim() != 3:
        raise ValueError(f"activations must be [N, T, D] or [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no examples: the activations are empty (N = 0); pass at least one example")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but activations are {tuple(x.shape)}: they must match in [N, T]")
    mask = mask.to(device=x.device).bool()
    empty = (~mask.any(1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"examples {empty[:10].tolist()} have no tokens in the mask: drop them or give them text")
    return x.float(), mask


# ----------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _norm_label(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()  # numpy scalars
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool):
        v = int(v)
    return v


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _int_tensor(labels: Any) -> bool:
    """Integer class ids in a 1-D tensor: the vectorised fast path (no per-label Python work)."""
    return isinstance(labels, torch.Tensor) and labels.dim() == 1 and labels.dtype in _INT_DTYPES


def infer_classes(labels: Sequence[Any]) -> list[Any]:
    """Sorted distinct labels, with clear errors for empty data, missing labels and a single class."""
    if len(labels) == 0:
        raise ValueError("no labels: the dataset is empty; give at least one example of each of two classes")
    if _int_tensor(labels):
        classes = torch.unique(labels).tolist()
        if len(classes) < 2:
            raise ValueError(f"all {len(labels)} labels are {classes[0]!r}: a probe needs at least two classes; "
                             "add examples of another class")
        return classes
    vals = [_norm_label(v) for v in labels]
    for i, v in enumerate(vals):
        if _is_missing(v):
            raise ValueError(f"label {i} is {labels[i]!r} (missing): every example needs a label; drop that row or fill it")
    for i, v in enumerate(vals):
        if isinstance(v, float):  # integral floats are already ints: this one is a fraction or inf
            raise ValueError(
                f"label {i} is {labels[i]!r}, not a class: probe labels are classes (0/1, or names), and a fraction "
                "looks like a score; threshold or round the scores into classes first (e.g. label = score >= 0.5)")
    classes = sorted(set(vals), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise ValueError(
            f"all {len(vals)} labels are {classes[0]!r}: a probe needs at least two classes; add examples of another class"
        )
    return classes


def encode_labels(labels: Sequence[Any] | torch.Tensor, classes: Sequence[Any], n: int | None = None) -> torch.Tensor:
    """Class indices (long) for `labels` given the known `classes`; errors name the bad value and its row."""
    if _int_tensor(labels) and len(labels) and all(type(c) is int for c in classes) and (n is None or len(labels) == n):
        cls = torch.tensor(list(classes), dtype=torch.long)
        order = torch.argsort(cls)
        lab = labels.long()
        pos = torch.searchsorted(cls[order], lab).clamp_max(len(cls) - 1)
        ok = cls[order][pos] == lab
        if bool(ok.all()):
            return order[pos]
        labels = labels.tolist()  # an unknown class: the loop below names it and its row
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    labels = list(labels)
    if n is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} examples: pass one label per example")
    if len(labels) == 0:
        raise ValueError("no labels: the dataset is empty")
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for i, v in enumerate(labels):
        v = _norm_label(v)
        if _is_missing(v):
            raise ValueError(f"label {i} is {labels[i]!r} (missing): every example needs a label; drop that row or fill it")
        if v not in index:
            raise ValueError(
                f"label {i} is {v!r}, a class the probe was not trained on (known: {list(classes)}); "
                "drop those rows or retrain with that class"
            )
        out.append(index[v])
    return torch.tensor(out, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ProbeDataset:
    """Texts with labels, and optional domain and split per example."""

    texts: list[str]
    labels: list[Any]
    domains: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    name: str = "data"

    def __post_init__(self) -> None:
        n = len(self.texts)
        if n == 0:
            raise ValueError(f"dataset '{self.name}' is empty: give at least one example of each of two classes")
        if len(self.labels) != n:
            raise ValueError(f"dataset '{self.name}': {n} texts but {len(self.labels)} labels; they must have equal length")
        for key in ("domains", "splits"):
            vals = getattr(self, key)
            if not vals:
                setattr(self, key, ["default"] * n if key == "domains" else [])
            elif len(vals) != n:
                raise ValueError(f"dataset '{self.name}': {n} texts but {len(vals)} {key}; they must have equal length")
        for i, t in enumerate(self.texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"dataset '{self.name}': text {i} is {t!r}; every example needs non-empty text")
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad:
            raise ValueError(f"dataset '{self.name}': unknown split names {bad}; use {list(SPLITS)}")
        infer_classes(self.labels)  # validates labels early

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list[Any]:
        return infer_classes(self.labels)

    @property
    def domain_names(self) -> list[str]:
        return sorted(set(self.domains))

    def select(self, idx: Iterable[int]) -> "ProbeDataset":
        idx = list(idx)
        if not idx:
            raise ValueError(f"dataset '{self.name}': the selection is empty")
        return ProbeDataset(
            [self.texts[i] for i in idx], [self.labels[i] for i in idx], [self.domains[i] for i in idx],
            [self.splits[i] for i in idx] if self.splits else [], self.name,
        )

    def subset(self, split: str | None = None, domain: str | None = None) -> "ProbeDataset":
        """Examples of one split and/or domain (splits are assigned first when missing)."""
        ds = self if self.splits or split is None else self.with_splits()
        if domain is not None and domain not in ds.domains:
            raise ValueError(f"dataset '{self.name}' has no domain {domain!r}; domains: {ds.domain_names}")
        idx = [i for i in range(len(ds)) if (split is None or ds.splits[i] == split) and (domain is None or ds.domains[i] == domain)]
        if not idx:
            raise ValueError(f"dataset '{self.name}' has no examples with split={split!r}, domain={domain!r}")
        return ds.select(idx)

    def with_splits(self, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> "ProbeDataset":
        """A copy with train/val/test assigned, stratified by (domain, label), seeded; keeps existing splits."""
        if self.splits:
            return self
        rng = random.Random(seed)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (d, y) in enumerate(zip(self.domains, self.labels)):
            groups.setdefault((d, str(y)), []).append(i)
        splits = [""] * len(self)
        for key in sorted(groups):
            idx = groups[key]
            rng.shuffle(idx)
            n_tr = round(fractions[0] * len(idx))
            n_va = round(fractions[1] * len(idx))
            for j, i in enumerate(idx):
                splits[i] = "train" if j < n_tr else "val" if j < n_tr + n_va else "test"
        return ProbeDataset(list(self.texts), list(self.labels), list(self.domains), splits, self.name)


def _row_to(rows: list[dict[str, Any]], source: str) -> ProbeDataset:
    if not rows:
        raise ValueError(f"{source} has no rows: give at least one example of each of two classes")
    for key in ("text", "label"):
        if key not in rows[0]:
            raise ValueError(f"{source} has no '{key}' column (columns: {sorted(rows[0])}); it needs 'text' and 'label'")
    texts, labels, domains, splits = [], [], [], []
    for i, r in enumerate(rows):
        texts.append(r.get("text"))
        labels.append(r.get("label"))
        domains.append(str(r.get("domain") or "default"))
        splits.append(str(r.get("split") or ""))
    if any(splits) and not all(splits):
        missing = [i for i, s in enumerate(splits) if not s][:10]
        raise ValueError(f"{source}: rows {missing} have no split while others do; fill every split or none")
    return ProbeDataset(texts, labels, domains, splits if all(splits) else [], Path(source).stem)


def _csv_label(v: str) -> Any:
    v = v.strip()
    if v == "" or v.lower() == "nan":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def load_dataset(source: str | Path) -> ProbeDataset:
    """Read a probe dataset: a `.jsonl` or `.csv` file (`text`, `label`, optional `domain`, `split`),
    or `hf:NAME[:SPLIT]` for a Hugging Face `datasets` dataset with those columns (needs `datasets`)."""
    s = str(source)
    if s.startswith("hf:"):
        try:
            import datasets  # type: ignore
        except ImportError as e:
            raise ImportError("reading hf: datasets needs the `datasets` package: pip install 'probescope[datasets]'") from e
        parts = s[3:].split(":")
        d = datasets.load_dataset(parts[0], split=parts[1] if len(parts) > 1 else "train")
        return _row_to([dict(r) for r in d], s)
    path = Path(s)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.suffix == ".jsonl":
        return _row_to(read_records(path), str(path))
    if path.suffix == ".csv":
        rows = read_records(path)
        for r in rows:
            if "label" in r:
                r["label"] = _csv_label(r["label"])
        return _row_to(rows, str(path))
    raise ValueError(f"{path}: unknown dataset format '{path.suffix}'; use .jsonl, .csv or hf:NAME")


def save_jsonl(ds: ProbeDataset, path: str | Path) -> Path:
    """Write a dataset as JSONL (text, label, domain, split)."""
    from ..core.io import atomic_write_bytes

    lines = []
    for i in range(len(ds)):
        row = {"text": ds.texts[i], "label": ds.labels[i], "domain": ds.domains[i]}
        if ds.splits:
            row["split"] = ds.splits[i]
        lines.append(json.dumps(row))
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


# ----------------------------------------------------------------------------------------------------------
# Activations for a dataset
# ----------------------------------------------------------------------------------------------------------


def featurize(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layers: int | Sequence[int],
    *,
    max_length: int = 64,
    batch_size: int = 32,
    drop_first: bool = True,
    quiet: bool | None = None,
    threads: int | None = 1,
) -> dict[int, Acts]:
    """Residual activations of `texts` at `layers` as `Acts` per layer (all tokens, float32, with mask).

    `drop_first` masks out each text's first token when it has more than one: on real models it is an
    attention sink whose norm is ~100x the others' (SmolLM2: ~2e4) and it carries no information about the text.
    `threads`: torch threads while capturing (one is several times faster on a busy 2-core machine).
    """
    from .base import torch_threads

    with torch_threads(threads):
        return _featurize(model, tokenizer, texts, layers, max_length, batch_size, drop_first, quiet)


def _featurize(model, tokenizer, texts, layers, max_length, batch_size, drop_first, quiet) -> dict[int, Acts]:
    from ..core.capture import capture
    from ..core.models.registry import model_id
    from ..core.progress import progress

    layers = [layers] if isinstance(layers, int) else list(layers)
    if len(texts) == 0:
        raise ValueError("no texts to featurize: the dataset is empty")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    xs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    masks: list[torch.Tensor] = []
    with progress(len(texts), "activations", unit="text", quiet=quiet) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            cap = capture(model, [texts[i] for i in idx], layers, tokenizer=tokenizer, max_length=max_length)
            masks.append(cap.attention_mask.bool())
            for layer in layers:
                xs[layer].append(cap.acts[layer].float())
            bar.advance(len(idx))
    T = max(m.shape[1] for m in masks)
    right = getattr(tokenizer, "padding_side", "right") != "left"

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = T - t.shape[1]
        if extra == 0:
            return t
        shape = list(t.shape)
        shape[1] = extra
        z = torch.zeros(shape, dtype=t.dtype)
        return torch.cat([t, z] if right else [z, t], dim=1)

    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    mask = torch.cat([pad(m) for m in masks])[inv]
    if drop_first:
        first = mask.float().argmax(1)
        keep = mask.sum(1) > 1
        mask[torch.arange(len(mask))[keep], first[keep]] = False
    mid = model_id(model)
    return {layer: Acts(torch.cat([pad(x) for x in xs[layer]])[inv], mask, mid, layer) for layer in layers}
