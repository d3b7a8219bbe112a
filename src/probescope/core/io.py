"""Atomic, durable file writes: a reader never sees a half-written file, and a written file survives a power cut.

Every write goes to a temp file in the same folder (`.NAME.*.tmp`), is fsynced, renamed over the target and
the folder is fsynced, so after `save_tensors`/`atomic_write_*` returns the file is on disk under its name.
Files get the user's umask (as `open()` would give them), not mkstemp's 0600. A kill mid-write leaves only a
`.tmp` file, which `clean_temp_files` (called by every resumable job on its next run) removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:
        m = os.umask(0)
        os.umask(m)
    return m


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the user's umask, as a plain open() would give
    finally:
        os.close(fd)
    return Path(tmp)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_temp_files(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove temp files (`.*.tmp`) a killed write left under `root`; returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = list(root.rglob(".*.tmp") if recursive else root.glob(".*.tmp"))
    for f in found:
        f.unlink(missing_ok=True)
    return found


def _named(e: OSError, path: Path) -> OSError:
    """The same OS error, naming `path` when it names no file (a failed write() or fsync() does not)."""
    if e.filename is None and e.errno is not None:
        return type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


@contextmanager
def _committed(path: Path) -> Iterator[Path]:
    """A temp name beside `path` for the caller to write (and fsync); on success it is renamed over `path` and the
    folder fsynced; on any failure the temp file is removed and an OS error names `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder, fsync, atomic rename, fsync the folder."""
    path = Path(path)
    with _committed(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is corrupt: delete it or restore it") from e


def read_artifact(folder: str | os.PathLike, name: str, kind: str, what: str, written_by: str) -> dict:
    """The JSON record `folder/name` of a saved artifact, checked to be of `kind`: a missing file names the command
    that writes one, another kind names what it holds. `what` says what the kind is ("an edit")."""
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a folder written by {written_by}")
    rec = read_json(path)
    if not isinstance(rec, dict) or rec.get("kind") != kind:
        found = rec.get("kind") if isinstance(rec, dict) else type(rec).__name__
        raise ValueError(f"{path} is not {what} (kind {found!r})")
    return rec


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Raise FloatingPointError naming the tensor and `where` if a floating tensor holds NaN or inf."""
    for k, v in tensors.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n_nan, n_inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
            raise FloatingPointError(
                f"{where}: tensor '{k}' holds {n_nan} NaN and {n_inf} inf values (dtype {str(v.dtype).removeprefix('torch.')}); "
                "nothing non-finite is saved or used"
            )


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 *, finite: bool = False) -> Path:
    """Save tensors as safetensors, atomically and durably (contiguous copies where needed).

    `finite=True` refuses (FloatingPointError, nothing written) a floating tensor with NaN or inf.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if finite:
        check_finite(plain, path)
    with _committed(path) as tmp:
        try:
            save_file(plain, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as e:  # safetensors reports a failing disk as SafetensorError("... (os error 28)")
            m = re.search(r"os error (\d+)", str(e))
            if m:
                code = int(m.group(1))
                raise OSError(code, os.strerror(code), str(path)) from None
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors may recreate the file: set the mode again
        _fsync_file(tmp)
    return path


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """{"size": bytes, "sha256": hex} of a file (what done markers record and `store verify` checks)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle), with a clear error for a corrupt file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it is corrupt or of another format") from e


def read_checkpoint(folder: str | os.PathLike, read: Any, start_over: str = "--no-resume") -> Any:
    """`read()` (part of) the checkpoint in `folder`; a damaged or unreadable one is refused naming the folder, what is
    wrong, and how to go on (`start_over`: the option that discards it), never half-restored."""
    try:
        return read()
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError, IndexError) as e:
        what = f"missing field or tensor {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"the checkpoint in {folder} cannot be resumed: {what}. Pass {start_over} to start over in "
                         "this folder (the damaged checkpoint is discarded), or use a new --out") from None
