"""Your own problems from a JSONL or CSV file, as train/val/test `MCQProblem`s (`exit collect --data FILE`).

One problem a row: `question` (the text), `options` (a JSON list, or in CSV one string with the options
separated by `|`), `answer` (the option's letter, e.g. "B" or "(B)", or its exact text) and optionally `split`
(train / val / test). A file with a `split` column keeps its splits; without one the rows are shuffled by the
seed and split in the proportions asked for (e.g. 160:100:50). Every bad value is named with its row and fix.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Sequence

from ..core.data.readers import read_records
from .mcq import LETTERS, SPLITS, MCQProblem

MIN_TRAIN = 8  # the exit probe trainer refuses fewer train problems
KIND = "file"


def _where(path: Path, i: int) -> str:
    return f"{path} row {i}"


def parse_options(value: Any, where: str) -> tuple[str, ...]:
    """A JSON list, or a `|`-separated string, as a tuple of stripped option texts."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        opts = [o.strip() for o in value.split("|")]
    elif isinstance(value, (list, tuple)):
        opts = [str(o).strip() for o in value]
    else:
        raise ValueError(f"{where}: options {value!r} must be a list (JSONL) or a '|'-separated string (CSV)")
    if any(not o for o in opts):
        raise ValueError(f"{where}: options {value!r} include an empty option: remove it or fill it in")
    return tuple(opts)


def answer_index(answer: Any, options: Sequence[str], where: str) -> int:
    """The index of `answer` among `options`: a letter ("B", "(b)") or the exact option text."""
    text = str(answer).strip() if answer is not None else ""
    if not text:
        raise ValueError(f"{where} has no answer: give the correct option's letter or its text")
    if text in options:
        return list(options).index(text)
    m = re.fullmatch(r"\(?([A-Za-z])\)?", text)
    if m and m.group(1).upper() in LETTERS[: len(options)]:
        return LETTERS.index(m.group(1).upper())
    folded = [o.casefold() for o in options]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    raise ValueError(f"{where}: answer {text!r} is neither a letter {LETTERS[0]}-{LETTERS[len(options) - 1]} nor one "
                     f"of its options {list(options)}: give the correct option's letter or its exact text")


def _problem(row: dict, i: int, path: Path, split: str, answers: str = "mcq") -> MCQProblem:
    where = _where(path, i)
    q = str(row.get("question") or "").strip()
    if not q:
        raise ValueError(f"{where} has an empty question: fill it in or remove the row")
    if answers == "free":  # free-form: the answer is the text itself; options, if any, are not shown
        a = str(row.get("answer") if row.get("answer") is not None else "").strip()
        if not a:
            raise ValueError(f"{where} has no answer: give the final answer's text (e.g. 42)")
        return MCQProblem(id=f"{split}-{KIND}-{i:05d}", split=split, kind=KIND, question=q, options=(), answer=-1,
                          result=a)
    opts = parse_options(row.get("options"), where)
    if not opts:
        raise ValueError(f"{where} has no options: multiple-choice early exit needs 2 to {len(LETTERS)} options "
                         "(a list, or 'a|b|c' in CSV); for free-form answers use --answers free")
    if len(opts) > len(LETTERS):
        raise ValueError(f"{where} has {len(opts)} options but the answer letters are {', '.join(LETTERS)}: give at "
                         f"most {len(LETTERS)} options")
    if len(opts) < 2:
        raise ValueError(f"{where} has 1 option {list(opts)}: give 2 to {len(LETTERS)} options")
    k = answer_index(row.get("answer"), opts, where)
    return MCQProblem(id=f"{split}-{KIND}-{i:05d}", split=split, kind=KIND, question=q, options=opts, answer=k,
                      result=opts[k])


def split_counts(n: int, weights: Sequence[int]) -> list[int]:
    """`n` items in proportion to `weights` (largest remainders), every nonzero weight getting at least one."""
    total = sum(weights)
    raw = [n * w / total for w in weights]
    counts = [int(r) for r in raw]
    for j in sorted(range(len(raw)), key=lambda j: counts[j] - raw[j])[: n - sum(counts)]:
        counts[j] += 1
    return counts


def read_problem_file(path: str | Path, n_train: int = 160, n_val: int = 100, n_test: int = 50,
                      seed: int = 0, answers: str = "mcq") -> dict[str, list[MCQProblem]]:
    """Train/val/test problems from `path` (see the module doc): the file's `split` column, or a seeded split in
    the proportions n_train:n_val:n_test. `answers="free"`: free-form problems (no options; `answer` is the text).
    Raises ValueError naming the bad row, value and fix."""
    if answers not in ("mcq", "free"):
        raise ValueError(f"answers {answers!r} is unknown: use mcq or free")
    path = Path(path)
    rows = read_records(path)
    if not rows:
        raise ValueError(f"{path} holds no rows: write one problem a row (question, options, answer[, split])")
    if not any("question" in r for r in rows):
        raise ValueError(f"{path} has no 'question' field (found: {', '.join(sorted({k for r in rows for k in r}))}): "
                         "name the column holding the problem text 'question'")
    has_split = [bool(str(r.get("split") or "").strip()) for r in rows]
    if any(has_split):
        if not all(has_split):
            i = has_split.index(False) + 1
            raise ValueError(f"{_where(path, i)} has no split while other rows have one: give every row a split "
                             f"({', '.join(SPLITS)}) or drop the column")
        names = [str(r["split"]).strip().lower() for r in rows]
        for i, s in enumerate(names, 1):
            if s not in SPLITS:
                raise ValueError(f"{_where(path, i)}: split {s!r} is unknown: use {', '.join(SPLITS)}")
        order = list(range(len(rows)))
        source = "its split column"
    else:
        weights = [n_train, n_val, n_test]
        if min(weights) < 0 or sum(weights) == 0:
            raise ValueError(f"n_train={n_train}, n_val={n_val}, n_test={n_test}: give the split proportions as "
                             "counts >= 0, not all zero")
        need = sum(w > 0 for w in weights)
        if len(rows) < need:
            raise ValueError(f"{path} has {len(rows)} rows, too few for {need} splits: add rows or give a 'split' column")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        counts = split_counts(len(rows), weights)
        names = [""] * len(rows)
        start = 0
        for s, c in zip(SPLITS, counts):
            for j in order[start: start + c]:
                names[j] = s
            start += c
        source = f"seed {seed}, proportions {n_train}:{n_val}:{n_test}"
    splits: dict[str, list[MCQProblem]] = {s: [] for s in SPLITS}
    for j in order:
        splits[names[j]].append(_problem(rows[j], j + 1, path, names[j], answers))
    n_tr = len(splits["train"])
    if 0 < n_tr < MIN_TRAIN:
        raise ValueError(f"{path}: the train split has {n_tr} problems ({source}); the exit probe needs at least "
                         f"{MIN_TRAIN}: add rows, raise --n-train, or move rows to train")
    owner: dict[str, str] = {}
    for s, probs in splits.items():
        for p in probs:
            if owner.setdefault(p.question, s) != s:
                raise ValueError(f"{path}: the question {p.question[:60]!r} is in the {owner[p.question]} and the {s} "
                                 "split: keep each question in one split (a repeat across splits leaks its answer)")
    return splits
