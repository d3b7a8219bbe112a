"""The texts a corpus job reads: the user's file (`corpus_texts(data, field)`), or a default corpus that needs no
download, the docstrings of the Python standard library.

The text is already on every machine that runs probescope; it is read with `ast` (nothing imported)
in a fixed order, so the corpus is the same on every run of one Python version.
"""

from __future__ import annotations

import ast
import inspect
import sysconfig
from functools import lru_cache
from pathlib import Path

# A fixed list of pure-Python stdlib modules with plenty of prose, so the corpus is stable.
MODULES = [
    "argparse", "asyncio", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "enum", "fractions", "functools", "gettext", "gzip", "heapq", "http",
    "imaplib", "inspect", "ipaddress", "json", "logging", "mailbox", "multiprocessing", "pathlib",
    "pickle", "pydoc", "queue", "random", "shutil", "smtplib", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "tkinter", "typing", "unittest", "urllib", "uuid",
    "xml", "zipfile",
]


def _files(stdlib: Path, name: str) -> list[Path]:
    p = stdlib / name
    if p.is_dir():
        return sorted(f for f in p.rglob("*.py") if "test" not in f.parts)
    f = stdlib / f"{name}.py"
    return [f] if f.exists() else []


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append(inspect.cleandoc(doc))
    return out


@lru_cache(maxsize=4)
def default_corpus(min_chars: int = 200, max_docs: int | None = None) -> tuple[str, ...]:
    """Docstrings (≥ `min_chars` characters) of a fixed list of stdlib modules, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    seen: set[str] = set()
    for name in MODULES:
        for f in _files(stdlib, name):
            for d in _docstrings(f):
                if len(d) >= min_chars and d not in seen:
                    seen.add(d)
                    docs.append(d)
                    if max_docs and len(docs) >= max_docs:
                        return tuple(docs)
    if not docs:
        raise RuntimeError(f"no docstrings found under {stdlib}: pass your own data (--data FILE)")
    return tuple(docs)


DEFAULT_CORPUS_NAME = "default-corpus:stdlib-docstrings"


def is_default(data: str | None) -> bool:
    """Whether `data` asks for the built-in corpus (None, '' or 'default')."""
    return data in (None, "", "default")


def corpus_texts(data: str | None = None, field: str = "text") -> list[str]:
    """The texts of a corpus job, read in one place: `data` (a JSONL/CSV/TXT file or a `datasets` folder, its `field`
    column) or, when None, '' or 'default', the built-in corpus (stdlib docstrings)."""
    if is_default(data):
        return list(default_corpus())
    from .readers import read_texts

    return read_texts(data, field)


def corpus_name(data: str | None) -> str:
    """How a run records where its texts came from: the file as given, or the built-in corpus's name."""
    return DEFAULT_CORPUS_NAME if is_default(data) else str(data)
