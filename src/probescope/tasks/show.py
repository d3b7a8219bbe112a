"""`probescope data list | show`: the registry's sets as a table, and a few records of one set as JSON lines."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..core.options import RunOptions
from ..core.options import option as _opt
from .registry import get_set, list_sets, make


@dataclass
class ListConfig:
    """List the generated data sets: name, what it is, what a record holds, its options."""


@dataclass
class ShowConfig(RunOptions):
    """Print N records of a generated data set as JSON lines (same seed, same records)."""

    name: str = field(metadata={"argument": True, "help": "the set's name (`probescope data list`)",
                                "nonempty": "give a set's name (`probescope data list` lists them)"})
    n: int = _opt(3, "how many records", min=0)
    option: list[str] = _opt(list, "a set's own option as KEY=VALUE, e.g. split=val or task=plural (VALUE read "
                                     "as JSON when it parses, else as text; repeatable)")


def plain(record: Any) -> Any:
    """A record as JSON-ready values: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: plain(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, dict):
        return {str(k): plain(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [plain(v) for v in record]
    return record


def parse_options(items: list[str]) -> dict[str, Any]:
    """['split=val', 'shots=2'] → {'split': 'val', 'shots': 2}; a VALUE that is valid JSON is read as JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--option {item!r}: write KEY=VALUE, e.g. --option split=val")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run_list(cfg: ListConfig) -> dict[str, Any]:
    """Every registered set: name, description, record, seeded, options (defaults)."""
    return {"sets": [{"name": s.name, "description": s.description, "record": s.record, "seeded": s.seeded,
                      "options": {k: plain(v) for k, v in s.options.items() if k != "tokenizer"}}
                     for s in list_sets()]}


def run_show(cfg: ShowConfig) -> dict[str, Any]:
    """`cfg.n` records of `cfg.name` for `cfg.seed`, as plain JSON values."""
    from ..core.threads import torch_threads

    get_set(cfg.name)  # an unknown name first, before the options
    options = parse_options(cfg.option)
    with torch_threads(cfg.threads or None):
        records = [plain(r) for r in make(cfg.name, cfg.n, cfg.seed, **options)]
    return {"name": cfg.name, "n": cfg.n, "seed": cfg.seed, "options": options, "records": records}
