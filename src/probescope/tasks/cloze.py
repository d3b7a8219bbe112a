"""Cloze items (a prompt continued by the right answer, scored against three others) and the generated cloze sets.

`ClozeItem` is the record of the fictitious entities' facts (tasks/entities.py) and of the unlearning wing's subjects
(unlearn/subjects.py re-exports it). Built here, from word lists and generators of this project:

* `antonyms`: "The opposite of hot is" → cold vs three other words (40 pairs written here).
* `arithmetic`: "Question: What is 23 + 45?\\nAnswer: 23 + 45 =" → the right result vs three near misses, the
  project's pirate-arith sums (tasks/pirate.py).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class ClozeItem:
    """One fact: `prompt` continued by `answer` (scored against `distractors` by summed log-probability)."""

    prompt: str
    answer: str
    distractors: tuple[str, ...] = ()
    key: str = ""  # the entity (e.g. the country): splits keep an entity on one side

    def choices(self) -> list[str]:
        return [self.answer, *self.distractors]

    def statement(self) -> str:
        """The fact as one sentence (training text)."""
        return f"{self.prompt} {self.answer}."

    def to_dict(self) -> dict:
        d = asdict(self)
        d["distractors"] = list(self.distractors)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClozeItem":
        return cls(d["prompt"], d["answer"], tuple(d.get("distractors", ())), d.get("key", ""))


def with_distractors(pairs: Sequence[tuple[str, str]], template: str, seed: int, k: int = 3) -> list[ClozeItem]:
    """One item per (key, answer): `template` filled with the key, `k` other answers as distractors (seeded)."""
    rng = random.Random(seed)
    answers = sorted({a for _, a in pairs})
    items = []
    for key, ans in pairs:
        others = [a for a in answers if a != ans]
        items.append(ClozeItem(template.format(key), ans, tuple(rng.sample(others, k)), key))
    return items


# Word pairs written for this project (a retain task: general knowledge unrelated to geography).
ANTONYM_PAIRS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("up", "down"),
    ("open", "closed"), ("early", "late"), ("rich", "poor"), ("strong", "weak"), ("full", "empty"),
    ("young", "old"), ("high", "low"), ("hard", "soft"), ("wet", "dry"), ("long", "short"), ("thick", "thin"),
    ("loud", "quiet"), ("clean", "dirty"), ("heavy", "light"), ("begin", "end"), ("win", "lose"),
    ("buy", "sell"), ("push", "pull"), ("give", "take"), ("day", "night"), ("left", "right"), ("inside", "outside"),
    ("true", "false"), ("friend", "enemy"), ("love", "hate"), ("question", "answer"), ("north", "south"),
    ("east", "west"), ("before", "after"), ("always", "never"), ("alive", "dead"), ("cheap", "expensive"),
    ("safe", "dangerous"), ("sweet", "sour"),
]


def antonyms(seed: int = 0) -> list[ClozeItem]:
    """"The opposite of hot is" → cold vs three other words (40 pairs)."""
    return with_distractors(ANTONYM_PAIRS, "The opposite of {} is", seed)


def arithmetic(n: int = 40, seed: int = 0) -> list[ClozeItem]:
    """A generated task to score as general ability (`--task-eval arithmetic`): "Question: What is 23 + 45?\\nAnswer:
    23 + 45 =" → the right result vs three near misses (±1, ±10, ±2), the project's pirate-arith sums."""
    from .pirate import items as arith_items

    rng = random.Random(seed)
    out = []
    for it in arith_items(n, seed=seed + 7):
        near = [it.result + d for d in (1, -1, 10, -10, 2, -2) if it.result + d >= 0 and it.result + d != it.result]
        dis = tuple(str(v) for v in rng.sample(near, 3))
        out.append(ClozeItem(f"Question: What is {it.a} {it.op} {it.b}?\nAnswer: {it.a} {it.op} {it.b} =",
                             str(it.result), dis, f"{it.a}{it.op}{it.b}"))
    return out
