"""Prompts for early exit: the chat template when the tokenizer has one, else a few-shot plain-text prompt."""

from __future__ import annotations

from typing import Any, Sequence

from ..tasks import mcq
from ..tasks.mcq import MCQProblem


def few_shot_prefix(shots: int, seed: int = 0) -> str:
    """`shots` worked train-split examples (user text, reasoning, `Answer: (X)`), for base models."""
    examples = mcq.generate("train", shots, seed=seed + 97) if shots > 0 else []
    return "".join(f"{mcq.user_text(p)}\n\n{mcq.trace(p)}\n\n" for p in examples)


def make_prompt(problem: MCQProblem, tokenizer: Any, shots: int = 2) -> str:
    """The prompt that ends where the model starts to reason (chat template, or `shots` examples first)."""
    if getattr(tokenizer, "chat_template", None):
        return mcq.build_prompt(problem, tokenizer)
    return few_shot_prefix(shots) + mcq.user_text(problem) + "\n\n"


def make_prompts(problems: Sequence[MCQProblem], tokenizer: Any, shots: int = 2) -> list[str]:
    prefix = None if getattr(tokenizer, "chat_template", None) else few_shot_prefix(shots)
    if prefix is None:
        return [mcq.build_prompt(p, tokenizer) for p in problems]
    return [prefix + mcq.user_text(p) + "\n\n" for p in problems]
