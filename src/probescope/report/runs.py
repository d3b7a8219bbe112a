"""Run folders: every job writes config, metrics and artifacts under one folder (default `runs/<name>/`).

One rule for every job: a run folder is not silently reused by another run. `RunDir(path, kind)` refuses a
folder that holds another kind of run (its `run.json`, or an activation store / SAE found there), and
`write_config` refuses one whose `config.json` records other settings, unless told to overwrite
(`overwrite=True`, a command's `--overwrite`, or `PROBESCOPE_OVERWRITE=1`). The same job rerun with the same
settings writes over its own files (that is a rerun, not a loss).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from ..core.io import atomic_write_json, read_json

# Settings that change how a job runs, not what it computes: a rerun may differ in these.
VOLATILE = frozenset({"quiet", "json", "json_out", "device", "threads", "resume", "overwrite", "checkpoint_every",
                      "log_every", "keep_checkpoints", "stop_after", "out", "out_dir", "world_size"})


# Kinds that share a folder by design (`probescope demo` writes one or the other to runs/demo).
_SAME_PLACE = frozenset({"demo", "exit-demo"})


def render_quietly(path: Path) -> Path | None:
    """Render the run's report page; a failure is reported on stderr, never losing the job's results."""
    from . import render_report

    try:
        return render_report(path)
    except Exception as e:  # the metrics are already on disk: a page that fails to draw must not fail the job
        print(f"probescope: could not render {path}/report.html: {e}", file=sys.stderr)
        return None


_ALLOWED: set[str] = set()  # folders the user said may be replaced (--overwrite), for this process


def allow_overwrite_at(path: str | Path) -> None:
    """Remember that the user allowed replacing the run at `path` (a CLI job's --overwrite)."""
    _ALLOWED.add(str(Path(path).resolve()))


def overwrite_allowed(overwrite: bool = False) -> bool:
    """True when told to overwrite: the argument or PROBESCOPE_OVERWRITE=1 in the environment."""
    return bool(overwrite) or os.environ.get("PROBESCOPE_OVERWRITE", "") not in ("", "0")


def existing_kind(path: str | Path) -> str | None:
    """The kind of run a folder holds: its run.json, else 'cache' for a store and 'sae' for an SAE; None if none."""
    path = Path(path)
    if not path.is_dir():
        return None
    rj = path / "run.json"
    if rj.exists():
        try:
            k = read_json(rj)
            if isinstance(k, dict) and k.get("kind"):
                return str(k["kind"])
        except ValueError:
            return "unknown (run.json is corrupt)"
    if (path / "manifest.json").exists():
        return "cache"
    if (path / "cfg.json").exists() and any((path / w).exists() for w in ("weights.safetensors", "sae.safetensors",
                                                                           "sae_weights.safetensors")):
        return "sae"
    if (path / "config.json").exists() and (path / "metrics.json").exists():
        return "unknown"
    return None


def check_out(path: str | Path, kind: str, overwrite: bool = False, option: str = "--overwrite") -> None:
    """Refuse `path` when it is a file or holds another kind of run, unless told to overwrite."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "--out is a file, not a folder", str(path))
    old = existing_kind(path)
    if old is None or old == kind or {old, kind} <= _SAME_PLACE or overwrite_allowed(overwrite) \
            or str(path.resolve()) in _ALLOWED:
        return
    raise FileExistsError(
        f"{path} holds a {old} run; this {kind} job would replace its files (config.json, metrics.json, report): "
        f"use another --out, or pass {option} (or set PROBESCOPE_OVERWRITE=1) to replace it")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def config_diff(old: Any, new: Any, ignore: Iterable[str] = VOLATILE, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Leaf-by-leaf differences of two configs (dicts), skipping `ignore`d keys: {'a.b': (old, new)}."""
    old, new = _plain(old), _plain(new)
    ignore = frozenset(ignore)
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return {} if old == new else {prefix or "config": (old, new)}
    out: dict[str, tuple[Any, Any]] = {}
    for k in list(old) + [k for k in new if k not in old]:
        if k in ignore:
            continue
        a, b = old.get(k), new.get(k)
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_diff(a, b, ignore, name))
        elif a != b:
            out[name] = (a, b)
    return out


def describe_diff(diff: dict[str, tuple[Any, Any]], old: str = "saved", new: str = "this run", limit: int = 8) -> str:
    """'batch_size: saved 256, this run 512; seed: saved 0, this run 1'."""
    items = [f"{k}: {old} {a!r}, {new} {b!r}" for k, (a, b) in list(diff.items())[:limit]]
    more = len(diff) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def check_config(path: str | Path, config: Any, overwrite: bool = False, kind: str | None = None) -> None:
    """Refuse (unless told to overwrite) when `path/config.json` records other settings than `config`."""
    p = Path(path) / "config.json"
    if overwrite_allowed(overwrite) or not p.exists() or str(Path(path).resolve()) in _ALLOWED:
        return
    try:
        old = read_json(p)
    except ValueError:
        return  # a corrupt config.json holds nothing to keep
    diff = config_diff(old, config)
    if diff:
        raise FileExistsError(
            f"{path} holds a{' ' + kind if kind else ''} run made with other settings "
            f"({describe_diff(diff, 'there', 'now')}); writing here would replace its results: use another "
            "--out, or pass --overwrite (or set PROBESCOPE_OVERWRITE=1) to replace it")


def check_run_folder(path: str | Path | None, kind: str, config: Any = None, overwrite: bool = False) -> None:
    """Before a job does any work: refuse an --out that holds another kind of run or other settings."""
    if path is None:
        return
    check_out(path, kind, overwrite)
    if config is not None and existing_kind(path) == kind:
        check_config(path, config, overwrite, kind)


class RunDir:
    """A run folder: `config.json`, `metrics.json`, artifacts; `report.html` is rendered from it."""

    def __init__(self, path: str | Path, kind: str | None = None, *, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite_allowed(overwrite) or str(self.path.resolve()) in _ALLOWED
        self._kind = kind
        if kind is not None:
            check_out(self.path, kind, self.overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        # a rerun into its own run keeps run.json as it was (a rerun refused later for other settings must leave
        # the folder untouched); a new run, or one told to overwrite, starts it afresh
        if kind is not None and (self.overwrite or existing_kind(self.path) != kind):
            meta = {"kind": kind, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_json(self.path / "run.json", meta)

    @classmethod
    def new(cls, name: str, kind: str, root: str | Path = "runs") -> "RunDir":
        """`runs/<name>/` under the working directory (or `root`)."""
        return cls(Path(root) / name, kind=kind)

    def check_config(self, config: Any) -> None:
        """Refuse (unless told to overwrite) when the folder's config.json records other settings."""
        check_config(self.path, config, self.overwrite, self._kind)

    def write_config(self, config: Any) -> Path:
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        self.check_config(config)
        return atomic_write_json(self.path / "config.json", config)

    def write_metrics(self, metrics: dict[str, Any], name: str = "metrics.json", report: bool = True) -> Path:
        """Write the metrics atomically; then (re)render `report.html`, so every job's page is current."""
        out = atomic_write_json(self.path / name, metrics)
        if report:
            render_quietly(self.path)
        return out

    def read(self, name: str) -> Any:
        return read_json(self.path / name)

    def file(self, name: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def kind(self) -> str | None:
        p = self.path / "run.json"
        return read_json(p).get("kind") if p.exists() else None
