"""Your own problems from a JSONL or CSV file, as train/val/test `MCQProblem`s (`exit collect --data FILE`).

One problem a row: `question` (the text), `options` (a JSON list, or in CSV one string with the options
separated by `|`), `answer` (the option's letter, e.g. "B" or "(B)", or its exact text) and optionally `split`
(train / val / test). Counts are counts:
* without a `split` column the rows are shuffled by the seed and each split given a count takes that many (rows
  left over stay unused, and the result says how many); the splits without a count share the rows not taken in
  the default shares 160/100/50, train getting at least `MIN_TRAIN` (8, the least `exit train` fits on) and val at
  least 1 when the rows allow it, so a small file works without any count;
* with a `split` column each split keeps its rows; a count takes the first N rows of that split (in file order).
Too few rows for what is asked is refused with the numbers and the fix; so is a train split of 1 to 7 problems.
Every bad value is named with its row and fix.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Sequence

from ..core.data.readers import read_records
from .mcq import LETTERS, SPLITS, MCQProblem

MIN_TRAIN = 8  # the exit probe trainer refuses fewer train problems
DEFAULT_COUNTS = {"train": 160, "val": 100, "test": 50}  # generated problems; the shares of a file's rows
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


def _counts_text(counts: dict[str, int]) -> str:
    return "/".join(str(counts[s]) for s in SPLITS) + " (train/val/test)"


def file_counts(n: int, asked: dict[str, int | None], path: Path, seed: int) -> tuple[dict[str, int], str]:
    """How many of `n` unsplit rows go to each split (see the module doc) and a sentence saying how."""
    given = {s: c for s, c in asked.items() if c is not None}
    taken = sum(given.values())
    if taken > n:
        asks = " ".join(f"--n-{s} {c}" for s, c in given.items())
        raise ValueError(f"{path} has {n} rows but {asks} ask for {taken}: give counts that add up to at most {n}, "
                         f"or leave them out (the rows are then split in the shares 160/100/50, at least {MIN_TRAIN} "
                         "in train)")
    free = [s for s in SPLITS if s not in given]
    counts = dict(given)
    left = n - taken
    if free:
        counts.update(zip(free, split_counts(left, [DEFAULT_COUNTS[s] for s in free])))
        floors = [(s, m) for s, m in (("train", MIN_TRAIN), ("val", 1)) if s in free]
        if "train" in free and left < sum(m for _, m in floors):
            raise ValueError(f"{path} has {n} rows{f' ({taken} taken by the counts given)' if taken else ''}: too few "
                             f"for the {MIN_TRAIN} train problems `exit train` fits the probe on"
                             + (" plus 1 val problem to choose the layer on" if "val" in free else "")
                             + f": add rows (a file of {MIN_TRAIN + 2} splits 8/1/1), or give --n-train 0 to "
                             "collect only val/test problems for a probe trained elsewhere")
        fixed: dict[str, int] = {}
        for s, m in floors:  # a small file: the least train/val the probe needs, when the rows allow it
            if counts[s] < m and left >= sum(m for _, m in floors):
                fixed[s] = m
                rest = [f for f in free if f not in fixed]
                counts.update(fixed)
                counts.update(zip(rest, split_counts(left - sum(fixed.values()), [DEFAULT_COUNTS[f] for f in rest])
                                  if rest else []))
    unused = n - sum(counts.values())
    how = (f"{n} rows drawn by seed {seed}: {_counts_text(counts)}"
           + (f" from the counts given{' (' + str(unused) + ' rows unused)' if unused else ''}" if not free else
              f", {'the splits without a count sharing the rest' if given else 'split'} in the shares 160/100/50"
              + (f" (train at least {MIN_TRAIN})" if "train" in free else "")))
    return counts, how


def read_problem_file(path: str | Path, n_train: int | None = None, n_val: int | None = None,
                      n_test: int | None = None, seed: int = 0, answers: str = "mcq") -> dict[str, list[MCQProblem]]:
    """Train/val/test problems from `path`: counts are counts (see the module doc; None: the file's split, or the
    rows not taken shared in the default shares). `answers="free"`: free-form problems (no options; `answer` is
    the text). Raises ValueError naming the bad row, value, numbers and fix."""
    return read_problem_splits(path, n_train, n_val, n_test, seed=seed, answers=answers)[0]


def read_problem_splits(path: str | Path, n_train: int | None = None, n_val: int | None = None,
                        n_test: int | None = None, *, seed: int = 0,
                        answers: str = "mcq") -> tuple[dict[str, list[MCQProblem]], str]:
    """`read_problem_file`, and a sentence saying how the rows were split (for the run's summary)."""
    if answers not in ("mcq", "free"):
        raise ValueError(f"answers {answers!r} is unknown: use mcq or free")
    asked = {"train": n_train, "val": n_val, "test": n_test}
    bad = {s: c for s, c in asked.items() if c is not None and c < 0}
    if bad:
        raise ValueError(f"{', '.join(f'n_{s}={c}' for s, c in bad.items())}: problem counts must be >= 0")
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
        have = {s: names.count(s) for s in SPLITS}
        short = {s: c for s, c in asked.items() if c is not None and c > have[s]}
        if short:
            raise ValueError(f"{path}'s split column has {_counts_text(have)} rows, fewer than "
                             + ", ".join(f"--n-{s} {c}" for s, c in short.items()) + " asks: lower the count to the "
                             "split's rows, leave it out (the whole split is used), or add rows to that split")
        order, seen = [], {s: 0 for s in SPLITS}
        for j, s in enumerate(names):
            if asked[s] is None or seen[s] < asked[s]:
                order.append(j)
                seen[s] += 1
        unused = len(rows) - len(order)
        source = "its split column" + (f", the first rows of each split as counted ({unused} rows unused)"
                                       if unused else "")
    else:
        counts, source = file_counts(len(rows), asked, path, seed)
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        names = [""] * len(rows)
        start = 0
        for s in SPLITS:
            for j in order[start: start + counts[s]]:
                names[j] = s
            start += counts[s]
        order = order[:start]
    splits: dict[str, list[MCQProblem]] = {s: [] for s in SPLITS}
    for j in order:
        splits[names[j]].append(_problem(rows[j], j + 1, path, names[j], answers))
    n_tr = len(splits["train"])
    if 0 < n_tr < MIN_TRAIN:
        raise ValueError(f"{path}: the train split has {n_tr} problems ({source}); `exit train` fits the probe on at "
                         f"least {MIN_TRAIN}: add rows (a file of {MIN_TRAIN + 2} or more works without counts), give "
                         f"--n-train {MIN_TRAIN} or more, or move rows to train")
    owner: dict[str, str] = {}
    for s, probs in splits.items():
        for p in probs:
            if owner.setdefault(p.question, s) != s:
                raise ValueError(f"{path}: the question {p.question[:60]!r} is in the {owner[p.question]} and the {s} "
                                 "split: keep each question in one split (a repeat across splits leaks its answer)")
    return splits, source
