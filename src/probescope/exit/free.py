"""Free-form answers (numbers, short strings): the forced answer is decoded, and a probe predicts its stability.

* The forced free answer at a cut: prompt + reasoning[:cut] + the cue `\\nAnswer:`, then up to `max_tokens`
  greedy tokens, up to the first newline; normalised (`normalize_answer`: strip, lowercase, strip trailing
  punctuation, numbers canonical: "1,200.0" → "1200").
* The answer-stability probe: an attention probe with classes ("changes", "stable") that predicts, from a
  reasoning prefix, whether the forced answer there already equals the final one. An exit fires when
  P(stable) >= τ (`ExitPolicy(stable_class=1)`) and answers with the forced answer at the cut.
* τ is calibrated with the same conformal rule (`calibrate.py`) on the val split; the baselines are the
  forced-answer settle rule (exit once the forced answer has not changed for m checks, m calibrated), a token
  budget, and the oracle (the settle point of the forced-answer curve).
"""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.capture import left_pad
from ..core.tokens import pad_id

STABILITY_CLASSES = ("changes", "stable")
MAX_ANSWER_TOKENS = 8
_NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?")


def normalize_answer(text: str) -> str:
    """First line, stripped, lowercased, trailing punctuation removed; a number in canonical form."""
    t = str(text).strip()
    t = t.splitlines()[0].strip() if t else ""
    t = t.lower().rstrip(".,;:!?").strip()
    if len(t) > 2 and t[0] == "(" and t[-1] == ")":
        t = t[1:-1].strip()
    if _NUMBER.fullmatch(t):
        try:
            d = Decimal(t.replace(",", ""))
            t = format(d.normalize(), "f") if d != d.to_integral_value() else str(int(d))
        except InvalidOperation:
            pass
    return t


@torch.no_grad()
def forced_free_answers(model: nn.Module, tokenizer: Any, sequences: Sequence[Sequence[int]],
                        max_tokens: int = MAX_ANSWER_TOKENS, batch_size: int = 16) -> list[str]:
    """Greedy answers (normalised) after token sequences that end with the cue; left-padded batches."""
    pad = pad_id(tokenizer, fallback=None)
    dev = next(model.parameters()).device
    out: list[str] = []
    for s in range(0, len(sequences), batch_size):
        ids, att = left_pad(sequences[s: s + batch_size], pad)
        gen = model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        for row in gen[:, ids.shape[1]:]:
            out.append(normalize_answer(tokenizer.decode(row, skip_special_tokens=True)))
    return out


def free_curve(model: nn.Module, tokenizer: Any, prompt_ids: list[int], reasoning_ids: list[int], cuts: Sequence[int],
               c_ids: list[int], batch_size: int = 16) -> list[str]:
    """The forced free answer after reasoning[:c] for each cut c."""
    return forced_free_answers(model, tokenizer, [list(prompt_ids) + list(reasoning_ids[:c]) + list(c_ids) for c in cuts],
                               batch_size=batch_size)


def answers_kind(probe: Any, answers: str | None = None) -> str:
    """"mcq" or "free": as given, or (None) from the probe's classes (a stability probe reads free-form answers)."""
    if answers is None:
        return "free" if probe is not None and tuple(str(c) for c in probe.classes) == STABILITY_CLASSES else "mcq"
    if answers not in ("mcq", "free"):
        raise ValueError(f"answers {answers!r} is unknown: use 'mcq' (option letters) or 'free' (free-form)")
    return answers


def free_policy(policy: Any) -> Any:
    """A probe policy for free-form answers: its confidence is P(stable), unless it names another class."""
    if policy.mode != "forced":
        raise ValueError("free-form answers exit with the forced answer: use mode='forced'")
    if policy.kind == "probe" and policy.stable_class is None:
        return replace(policy, stable_class=STABILITY_CLASSES.index("stable"))
    return policy


def answer_complete(tokenizer: Any, ids: Sequence[int], max_tokens: int = MAX_ANSWER_TOKENS) -> bool:
    """Whether a free answer being decoded is settled: `max_tokens` tokens, or a newline after some text (only the
    first non-empty line counts, see `normalize_answer`)."""
    if len(ids) >= max_tokens:
        return True
    text = tokenizer.decode(list(ids), skip_special_tokens=True).lstrip()
    return "\n" in text


def class_probs(probe: Any, p: torch.Tensor) -> torch.Tensor:
    """Probabilities per class `[..., C]`: a binary probe's P(second class) `[...]` becomes `[..., 2]`."""
    return torch.stack([1 - p, p], -1) if probe.n_out == 1 else p


def stability_labels(row: dict, checks: Sequence[tuple[int, int]]) -> list[str]:
    """Per check: "stable" when the forced answer at its cut equals the final answer, else "changes"."""
    cur = dict(zip(row["curve_cuts"], row["curve_answers"]))
    return [STABILITY_CLASSES[int(cur[c] == row["final"])] for c, _ in checks]


def stability_examples(acts: torch.Tensor, lengths: torch.Tensor, rows: Sequence[dict],
                       checks: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One prefix example per check (the probe after token j) labelled by stability, plus each whole reasoning."""
    T = int(lengths.max())
    ar = torch.arange(T)
    xs, ms, ys = [], [], []
    for i, (row, cps) in enumerate(zip(rows, checks)):
        n = int(lengths[i])
        if n == 0:
            continue
        for (_, j), y in zip(cps, stability_labels(row, cps)):
            xs.append(acts[i, :T])
            ms.append(ar < j + 1)
            ys.append(y)
        xs.append(acts[i, :T])
        ms.append(ar < n)
        ys.append("stable")
    return torch.stack(xs), torch.stack(ms), ys


def settle_confidence(answers: Sequence[str]) -> np.ndarray:
    """The settle rule's confidence at each check: 1 − 1/(m+1) after m checks in a row with the same forced
    answer (so τ picks the smallest run length m that meets the agreement target)."""
    conf, run = [], 0
    for k, a in enumerate(answers):
        run = run + 1 if k > 0 and a == answers[k - 1] else 0
        conf.append(1 - 1 / (run + 1))
    return np.array(conf, dtype=float)
