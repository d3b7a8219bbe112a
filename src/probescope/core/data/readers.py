"""Read texts from JSONL, CSV, plain text or an HF `datasets` folder, with clear errors."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Sequence


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts from `path`: .jsonl (one object a line, `field` key), .csv (`field` column),
    .txt (paragraphs split on blank lines), or a folder saved by `datasets.save_to_disk`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file '{path}' does not exist")
    if path.is_dir():
        texts = _read_hf_dataset(path, field)
    elif path.suffix in (".jsonl", ".json"):
        texts = _read_jsonl(path, field)
    elif path.suffix == ".csv":
        texts = _read_csv(path, field)
    elif path.suffix in (".txt", ".md", ""):
        texts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    else:
        raise ValueError(f"cannot read '{path}': use .jsonl, .csv, .txt or a datasets folder")
    if not texts:
        raise ValueError(f"'{path}' holds no texts: it is empty or has no '{field}' values")
    return texts


def _jsonl_rows(path: Path):
    """(line number, parsed value) of each non-empty line of a JSONL file; a bad line is named."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not valid JSON ({e})") from e


def read_records(path: str | Path) -> list[dict]:
    """Rows of a .jsonl (one JSON object a line) or .csv file as dicts, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file '{path}' does not exist (or is a folder): give a .jsonl or .csv file")
    if path.suffix in (".jsonl", ".json"):
        rows: list[dict] = []
        for i, row in _jsonl_rows(path):
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i} is not a JSON object: write one object per line")
            rows.append(row)
        return rows
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return [dict(r) for r in csv.DictReader(f)]
    raise ValueError(f"cannot read records from '{path}': use .jsonl or .csv")


def _read_jsonl(path: Path, field: str) -> list[str]:
    out = []
    for i, row in _jsonl_rows(path):
        if not isinstance(row, dict) or field not in row:
            raise ValueError(f"{path}:{i} has no '{field}' field (pass field=... / --text-field)")
        out.append(str(row[field]))
    return out


def _read_csv(path: Path, field: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise ValueError(f"{path} has no '{field}' column (columns: {reader.fieldnames})")
        return [row[field] for row in reader]


def _read_hf_dataset(path: Path, field: str) -> list[str]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError("reading a datasets folder needs `pip install 'probescope[datasets]'`") from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if field not in ds.column_names:
        raise ValueError(f"dataset at {path} has no '{field}' column (columns: {ds.column_names})")
    return [str(t) for t in ds[field]]


def data_hash(texts: Sequence[str]) -> str:
    """sha256 of the texts (order matters), to tie a store to its data."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
