"""The one prompt builder of early exit: the chat template when the tokenizer has one, else a few-shot prompt.

Every path (collect, eval, the demo, `exit run`) builds its prompt here, with `DEFAULT_SHOTS` worked examples
for models without a chat template unless told otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..tasks import mcq
from ..tasks.mcq import MCQProblem
from .formats import ReasoningFormat, get_format

DEFAULT_SHOTS = 1


def few_shot_prefix(shots: int, seed: int = 0, free: bool = False) -> str:
    """`shots` worked train-split examples (user text, reasoning, `Answer: (X)`; free-form: `Answer: 12`), for
    base models."""
    examples = mcq.generate("train", shots, seed=seed + 97) if shots > 0 else []
    examples = [mcq.as_free(p) for p in examples] if free else examples
    return "".join(f"{mcq.user_text(p)}\n\n{mcq.trace(p)}\n\n" for p in examples)


def exit_prompt(user_text: str, tokenizer: Any, shots: int = DEFAULT_SHOTS, prefix: str | None = None,
                fmt: ReasoningFormat | str | None = None) -> str:
    """The prompt for one user turn, ending where the model starts to reason (inside the think block of a
    think format: `fmt.open_prompt`)."""
    fmt = get_format(fmt)
    if getattr(tokenizer, "chat_template", None):
        return fmt.open_prompt(tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                                             add_generation_prompt=True))
    if fmt.think:
        raise ValueError(f"format {fmt.name!r} needs the model's chat template, but this tokenizer has none: "
                         "choose --format plain")
    return (few_shot_prefix(shots) if prefix is None else prefix) + user_text + "\n\n"


def make_prompt(problem: MCQProblem, tokenizer: Any, shots: int = DEFAULT_SHOTS,
                fmt: ReasoningFormat | str | None = None) -> str:
    """The prompt of one problem."""
    return exit_prompt(mcq.user_text(problem), tokenizer, shots, fmt=fmt)


def make_prompts(problems: Sequence[MCQProblem], tokenizer: Any, shots: int = DEFAULT_SHOTS,
                 fmt: ReasoningFormat | str | None = None) -> list[str]:
    """Prompts of many problems (the few-shot prefix built once)."""
    free = bool(problems) and problems[0].free
    prefix = None if getattr(tokenizer, "chat_template", None) else few_shot_prefix(shots, free=free)
    return [exit_prompt(mcq.user_text(p), tokenizer, shots, prefix, fmt) for p in problems]
