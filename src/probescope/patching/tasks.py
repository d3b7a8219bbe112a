"""Prompt pairs for patching: the generated indirect-object task (tasks/ioi.py), and the user's own pairs from JSONL/CSV.

A pair is (clean text, corrupted text, answer, wrong): the metric is logit[answer] − logit[wrong] at the last
token, which is large on the clean prompt and small or negative on the corrupted one.

`ioi`: "When Mary and John went to the store, John gave a drink to" → " Mary" (the indirect object). The corrupted
prompt swaps the second mention of the subject for the other name ("..., Mary gave a drink to"), which makes
" John" the natural answer; both prompts have the same tokens but one, so positions align.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from ..core.tokens import pad_id as pad_token
from ..tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, ioi_texts  # noqa: F401  (generated in tasks/)
from ..tasks.ioi import single_token as _single


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
        if len(ci) != len(ki):  # --align left cannot help here: it lines up different pairs, not a pair's prompts
            raise ValueError(f"pair {i + 1}: the clean prompt has {len(ci)} tokens and the corrupted one {len(ki)}: "
                             f"{c!r} vs {k!r}. Patching swaps activations position by position, so a pair's two "
                             "prompts need the same token count: replace words by words of the same token count "
                             "(e.g. one name by another name of one token)")
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
        raise ValueError(f"the pairs have different token lengths ({sorted(lengths)}): patch pairs of one length, "
                         "or align='left' (--align left) to left-pad the pairs so their last tokens line up (each "
                         "pair's two prompts already have one length)")
    ids, mask = align_left(clean + corrupt, pad)
    P = len(clean)
    if not torch.equal(mask[:P], mask[P:]):
        raise ValueError("with align='left' each clean prompt and its corrupted one must still have the same length")
    return Pairs(ids[:P], ids[P:], ans, wrong, list(texts), mask[:P])
