"""Prompt pairs for patching: a generated indirect-object task, and the user's own pairs from JSONL/CSV.

A pair is (clean text, corrupted text, answer, wrong): the metric is logit[answer] − logit[wrong] at the last
token, which is large on the clean prompt and small or negative on the corrupted one.

`ioi`: "When Mary and John went to the store, John gave a drink to" → " Mary" (the indirect object). The corrupted
prompt swaps the second mention of the subject for the other name ("..., Mary gave a drink to"), which makes
" John" the natural answer; both prompts have the same tokens but one, so positions align.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from ..core.tokens import pad_id as pad_token

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


@dataclass
class Pairs:
    """Tokenised prompt pairs, aligned position by position, with answer and wrong token ids."""

    clean: torch.Tensor  # [P, T]
    corrupt: torch.Tensor  # [P, T]
    answer_ids: list[int]
    wrong_ids: list[int]
    texts: list[tuple[str, str, str, str]]
    attention_mask: torch.Tensor | None = None

    def tokens(self, tokenizer: Any, row: int = 0) -> list[str]:
        return [tokenizer.decode([int(t)]) for t in self.clean[row]]


def _single(tokenizer: Any, word: str) -> int | None:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def ioi_texts(n: int, seed: int = 0, tokenizer: Any = None, template: int | None = None) -> list[tuple[str, str, str, str]]:
    """`n` generated (clean, corrupt, answer, wrong) quadruples from one template (`template`, default seed mod the
    number of templates), so positions mean the same in every pair; with a tokenizer, only single-token names and
    pairs of the most common token length (so they stack without padding)."""
    names = [x for x in NAMES if tokenizer is None or _single(tokenizer, " " + x) is not None]
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


def read_pairs(path: str | Path) -> list[tuple[str, str, str, str]]:
    """Pairs from JSONL or CSV with fields clean, corrupt, answer, wrong (answers as they follow the prompt,
    usually with a leading space)."""
    from ..core.data import read_records

    rows = read_records(path)
    need = ("clean", "corrupt", "answer", "wrong")
    out = []
    for i, r in enumerate(rows):
        miss = [k for k in need if not isinstance(r.get(k), str) or r.get(k) == ""]
        if miss:
            raise ValueError(f"{path}: row {i + 1} lacks {', '.join(miss)}: every row needs the fields "
                             f"{', '.join(need)} (answer and wrong are the next tokens, e.g. ' Mary')")
        out.append((r["clean"], r["corrupt"], r["answer"], r["wrong"]))
    if not out:
        raise ValueError(f"{path} holds no pairs: write one JSON object per line with {', '.join(need)}")
    return out


def tokenize_pairs(tokenizer: Any, texts: Sequence[tuple[str, str, str, str]], align: str = "exact") -> Pairs:
    """Token ids of each pair. `align='exact'` needs equal lengths; 'left' left-pads to a common length."""
    from .core import align_left

    clean, corrupt, ans, wrong = [], [], [], []
    for i, (c, k, a, w) in enumerate(texts):
        ci = tokenizer(c)["input_ids"]
        ki = tokenizer(k)["input_ids"]
        if len(ci) != len(ki) and align == "exact":
            raise ValueError(f"pair {i + 1}: the clean prompt has {len(ci)} tokens and the corrupted one {len(ki)}: "
                             f"{c!r} vs {k!r}. Patching needs aligned positions: use words of equal token count, or "
                             "align='left' (--align left) to line up the last tokens")
        ai, wi = _single(tokenizer, a), _single(tokenizer, w)
        if ai is None or wi is None:
            bad = a if ai is None else w
            raise ValueError(f"pair {i + 1}: the answer {bad!r} is not a single token: the logit-difference metric "
                             "compares two next tokens; use answers that are one token (with their leading space)")
        clean.append(ci), corrupt.append(ki), ans.append(ai), wrong.append(wi)
    lengths = {len(x) for x in clean + corrupt}
    pad = pad_token(tokenizer)
    if len(lengths) == 1:
        return Pairs(torch.tensor(clean), torch.tensor(corrupt), ans, wrong, list(texts))
    if align != "left":
        raise ValueError(f"the prompts have different token lengths ({sorted(lengths)}): patch pairs of one length, "
                         "or align='left' (--align left) to left-pad them so the last tokens line up")
    ids, mask = align_left(clean + corrupt, pad)
    P = len(clean)
    if not torch.equal(mask[:P], mask[P:]):
        raise ValueError("with align='left' each clean prompt and its corrupted one must still have the same length")
    return Pairs(ids[:P], ids[P:], ans, wrong, list(texts), mask[:P])
