"""The indirect-object (IOI) prompt pairs, generated from the templates and names below (the patching wing's `ioi`).

A pair is (clean text, corrupted text, answer, wrong): "When Mary and John went to the store, John gave a drink to"
→ " Mary" (the indirect object); the corrupted prompt swaps the second mention of the subject for the other name
("..., Mary gave a drink to"), which makes " John" the natural answer; both prompts have the same tokens but one,
so positions align.
"""

from __future__ import annotations

import random
from typing import Any

NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "David", "Emma", "James", "Anna", "Paul", "Laura", "Mark",
         "Kate", "Peter", "Lucy", "Tom", "Jane", "Mike", "Rose", "Sam", "Emily", "Daniel", "Grace", "Jack", "Helen",
         "Chris", "Amy", "Steve", "Lisa", "Adam", "Julia", "Ben"]
PLACES = ["store", "park", "school", "beach", "office", "garden", "market", "station", "library", "restaurant"]
OBJECTS = ["a drink", "a book", "a letter", "a gift", "an apple", "a key", "a ticket", "a pen", "a flower", "a bag"]
TEMPLATES = [
    "When {A} and {B} went to the {place}, {S} gave {obj} to",
    "After {A} and {B} arrived at the {place}, {S} handed {obj} to",
    "While {A} and {B} were at the {place}, {S} passed {obj} to",
    "Then {A} and {B} walked to the {place}, and {S} gave {obj} to",
]


def single_token(tokenizer: Any, word: str) -> int | None:
    """The id of `word` when the tokenizer makes it one token, else None."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def ioi_texts(n: int, seed: int = 0, tokenizer: Any = None, template: int | None = None) -> list[tuple[str, str, str, str]]:
    """`n` generated (clean, corrupt, answer, wrong) quadruples from one template (`template`, default seed mod the
    number of templates), so positions mean the same in every pair; with a tokenizer, only single-token names and
    pairs of the most common token length (so they stack without padding)."""
    names = [x for x in NAMES if tokenizer is None or single_token(tokenizer, " " + x) is not None]
    if len(names) < 2:
        raise ValueError("the tokenizer splits every name into several tokens: the ioi task needs single-token names; "
                         "bring your own pairs with --task FILE.jsonl")
    rng = random.Random(seed)
    t = TEMPLATES[(seed if template is None else template) % len(TEMPLATES)]
    cands = []
    for _ in range(max(20 * n, 50)):
        a, b = rng.sample(names, 2)
        kw = dict(place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
        io, s = (a, b) if rng.random() < 0.5 else (b, a)  # the subject is either name, so position cannot cue it
        cands.append((t.format(A=a, B=b, S=s, **kw), t.format(A=a, B=b, S=io, **kw), " " + io, " " + s))
    if tokenizer is not None:
        lens = [len(tokenizer(c)["input_ids"]) for c, *_ in cands]
        mode = max(set(lens), key=lens.count)
        cands = [c for c, L in zip(cands, lens) if L == mode]
    return cands[:n]
