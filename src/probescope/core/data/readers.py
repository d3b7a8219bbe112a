"""Read texts from JSONL, CSV, plain text or an HF `datasets` folder, with clear errors.

Every file a job reads goes through here: a byte that is not UTF-8 is named by file, line and byte offset; a field
longer than `MAX_FIELD` characters is refused by name (one 10 MB field made a tokenizer try to allocate terabytes).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Iterator, Sequence

MAX_FIELD = 1_000_000  # characters in one field (a long book chapter is ~100k); longer is refused, not truncated


def _not_utf8(path: Path, line: int, e: UnicodeDecodeError, offset: int = 0) -> ValueError:
    return ValueError(f"{path}:{line}: byte {offset + e.start} (0x{e.object[e.start]:02x}) is not UTF-8 ({e.reason}); "
                      "save the file as UTF-8")


def _check_len(path: Path, line: int, name: str, value: object) -> None:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        raise ValueError(f"{path}:{line}: field '{name}' holds {len(value):,} characters, over the limit of "
                         f"{MAX_FIELD:,}; split the text into shorter records")


def _text_file(path: Path) -> str:
    """The whole file as UTF-8, a bad byte named by line and offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw.count(b"\n", 0, e.start) + 1, e) from None


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
        texts = [p.strip() for p in _text_file(path).split("\n\n") if p.strip()]
        for t in texts:
            _check_len(path, 1, "text", t)
    else:
        raise ValueError(f"cannot read '{path}': use .jsonl, .csv, .txt or a datasets folder")
    if not texts:
        raise ValueError(f"'{path}' holds no texts: it is empty or has no '{field}' values")
    return texts


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-empty line of a JSONL file; a bad line, byte or field is named."""
    offset = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, i, e, offset) from None
            offset += len(raw)
            if not line.strip():
                continue
            if len(line) > 4 * MAX_FIELD:
                raise ValueError(f"{path}:{i}: the line holds {len(line):,} characters, over 4 × the field limit of "
                                 f"{MAX_FIELD:,}; split the text into shorter records")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not valid JSON ({e})") from e
            if isinstance(row, dict):
                for k, v in row.items():
                    _check_len(path, i, k, v)
            yield i, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a CSV file with a header; a bad byte or an over-long field is named."""
    old = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    yield reader.line_num, dict(row)
            except UnicodeDecodeError:
                raise _bad_byte(path) from None
            except csv.Error as e:
                if "field larger than field limit" in str(e):
                    raise ValueError(f"{path}:{reader.line_num + 1}: a field is over the limit of {MAX_FIELD:,} characters; "
                                     "split the text into shorter records") from None
                raise ValueError(f"{path}:{reader.line_num} is not valid CSV ({e})") from None
    except UnicodeDecodeError:  # in the header
        raise _bad_byte(path) from None
    finally:
        csv.field_size_limit(old)


def _bad_byte(path: Path) -> ValueError:
    """The error for the first byte of `path` that is not UTF-8, named by line and offset."""
    try:
        _text_file(path)
    except ValueError as e:
        return e
    return ValueError(f"{path} is not UTF-8; save the file as UTF-8")  # pragma: no cover


def records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of each row of a .jsonl (one JSON object a line) or .csv file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file '{path}' does not exist (or is a folder): give a .jsonl or .csv file")
    if path.suffix in (".jsonl", ".json"):
        rows: list[tuple[int, dict]] = []
        for i, row in _jsonl_rows(path):
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i} is not a JSON object: write one object per line")
            rows.append((i, row))
        return rows
    if path.suffix == ".csv":
        return list(_csv_rows(path))
    raise ValueError(f"cannot read records from '{path}': use .jsonl or .csv")


def read_records(path: str | Path) -> list[dict]:
    """Rows of a .jsonl (one JSON object a line) or .csv file as dicts, with clear errors."""
    return [r for _, r in records(path)]


def _read_jsonl(path: Path, field: str) -> list[str]:
    out = []
    for i, row in _jsonl_rows(path):
        if not isinstance(row, dict) or field not in row:
            raise ValueError(f"{path}:{i} has no '{field}' field (pass field=... / --text-field)")
        out.append(str(row[field]))
    return out


def _read_csv(path: Path, field: str) -> list[str]:
    out = []
    for i, row in _csv_rows(path):
        if field not in row:
            raise ValueError(f"{path} has no '{field}' column (columns: {list(row)})")
        out.append(row[field])
    return out


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
