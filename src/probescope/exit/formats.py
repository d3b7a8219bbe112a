"""Reasoning formats: where a model reasons and how its answer is asked for (`--format NAME`).

A `ReasoningFormat` holds the answer cue, the think markers and the policy's boundary:
* plain / smollm2-reasoner (today's format): the reasoning is the start of the reply; the model's own end is its
  `\\nAnswer:` line; an exit appends the cue `\\nAnswer: (` (at a newline boundary the fed newline is the cue's
  first token) and reads the letter.
* deepseek-r1-distill / qwen3: the reasoning is the inside of a `<think>` block (the prompt ends with `<think>\\n`:
  the chat template opens it, or the format appends it); the model's own end is `</think>`; an exit closes the
  block and asks for the answer: `</think>\\n\\nAnswer: (`, then the letter, `)` and EOS.
Boundaries (where the policy checks): "newline" (the newline token), "sentence" (a token whose text ends a
sentence: `.`, `!`, `?`, maybe followed by quotes/brackets and spaces, or holds a newline; a decimal point counts
too), "every" (every `every` tokens).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

from ..core.options import Checked, option
from .answer import ANSWER_CUE, ANSWER_LINE, LETTERS, cue_ids

BOUNDARIES = ("newline", "sentence", "every")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


@dataclass(frozen=True)
class ReasoningFormat:
    """The answer cue (after the think block's close, if any), the think markers (both empty: no think block),
    the boundary where the policy checks (newline | sentence | every, with `every` tokens) and the text written
    after the answer letter."""

    name: str = "plain"
    answer_cue: str = ANSWER_CUE
    think_open: str = ""
    think_close: str = ""
    boundary: str = "newline"
    every: int = 8
    close_with: str = ")"

    def __post_init__(self) -> None:
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary {self.boundary!r} is unknown: use one of {', '.join(BOUNDARIES)}")
        if self.every < 1:
            raise ValueError(f"every={self.every}: must be >= 1")
        if bool(self.think_open) != bool(self.think_close):
            raise ValueError(f"think markers {self.think_open!r} / {self.think_close!r}: give both or neither")
        if not self.answer_cue:
            raise ValueError("answer_cue is empty: give the text that asks for the answer, e.g. '\\nAnswer: ('")

    @property
    def think(self) -> bool:
        return bool(self.think_close)

    @property
    def cue(self) -> str:
        """What an exit appends to the kept reasoning: the think block's close, then the answer cue."""
        return self.think_close + self.answer_cue

    @property
    def stop(self) -> str:
        """The model's own end of reasoning (a prefix of `cue`): `</think>`, or the `\\nAnswer:` line."""
        return self.think_close or ANSWER_LINE

    def with_cue(self, answer_cue: str | None) -> "ReasoningFormat":
        """This format with another answer cue (None or "": unchanged)."""
        return replace(self, answer_cue=answer_cue) if answer_cue else self

    def free_form(self) -> "ReasoningFormat":
        """This format for free-form answers: the cue without its option bracket (`\nAnswer: (` → `\nAnswer:`)."""
        return replace(self, answer_cue=self.answer_cue.rstrip("( ") or self.answer_cue, close_with="")

    def open_prompt(self, prompt: str) -> str:
        """The prompt ending inside an open think block (the chat template may already open it)."""
        if self.think and not prompt.rstrip().endswith(self.think_open):
            return prompt + self.think_open + "\n"
        return prompt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, tokenizer: Any, letters: Sequence[str] = LETTERS) -> None:
        """Raise a clear error unless this tokenizer uses the think markers and keeps the cue apart from the letter."""
        if self.think:
            template = getattr(tokenizer, "chat_template", None) or ""
            for m in (self.think_open, self.think_close):
                n = len(tokenizer(m, add_special_tokens=False)["input_ids"])
                if n != 1:
                    raise ValueError(f"format {self.name!r} marks reasoning with {self.think_open}…{self.think_close}, "
                                     f"but {m!r} is {n} tokens for this tokenizer, not one of its tokens: this model "
                                     "does not use think blocks; choose --format plain")
            if not template:
                raise ValueError(f"format {self.name!r} needs the model's chat template (it opens the think block), "
                                 "but this tokenizer has none: choose --format plain")
            if self.think_open not in template and self.think_close not in template:
                raise ValueError(f"format {self.name!r} uses {self.think_open}…{self.think_close}, but this tokenizer's "
                                 f"chat template never writes {self.think_open!r} or {self.think_close!r}: choose a "
                                 "format whose markers the model uses (--format plain for none)")
        c = cue_ids(tokenizer, self.cue)
        if c[: len(cue_ids(tokenizer, self.stop))] != cue_ids(tokenizer, self.stop):
            raise ValueError(f"the cue {self.cue!r} does not start with the model's own end {self.stop!r} token-wise "
                             f"for this tokenizer: set answer_cue (--cue) so that it does")
        for L in letters:
            joint = list(tokenizer(self.cue + L, add_special_tokens=False)["input_ids"])
            alone = list(tokenizer(L, add_special_tokens=False)["input_ids"])
            if joint != c + alone:
                raise ValueError(f"this tokenizer merges the answer cue {self.answer_cue!r} with the letter {L!r} "
                                 f"({self.cue + L!r} is tokens {joint}, not the cue's {c} then the letter's {alone}): "
                                 "the forced answer could not read the letter; set the answer cue (--cue, "
                                 "ReasoningFormat.answer_cue) to text that ends where a token ends, e.g. ending in ' ('")


FORMATS: dict[str, ReasoningFormat] = {
    "plain": ReasoningFormat("plain"),
    "smollm2-reasoner": ReasoningFormat("smollm2-reasoner"),
    "deepseek-r1-distill": ReasoningFormat("deepseek-r1-distill", "\n\nAnswer: (", "<think>", "</think>"),
    "qwen3": ReasoningFormat("qwen3", "\n\nAnswer: (", "<think>", "</think>"),
}


def get_format(fmt: str | ReasoningFormat | dict | None = None, boundary: str | None = None,
               answer_cue: str | None = None) -> ReasoningFormat:
    """A format by name (or a stored dict; None: plain), optionally with another boundary ("newline",
    "sentence", "every" or "every:N") or answer cue."""
    if fmt is None or fmt == "":
        out = FORMATS["plain"]
    elif isinstance(fmt, ReasoningFormat):
        out = fmt
    elif isinstance(fmt, dict):
        out = ReasoningFormat(**fmt)
    elif fmt in FORMATS:
        out = FORMATS[fmt]
    else:
        raise ValueError(f"format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
    if boundary:  # "sentence", or "every:16"
        name, _, n = boundary.partition(":")
        if n and not n.strip().isdigit():
            raise ValueError(f"boundary {boundary!r}: write every:N with a whole number N, e.g. every:16")
        out = replace(out, boundary=name.strip(), **({"every": int(n)} if n else {}))
    return out.with_cue(answer_cue)


def newline_id(tokenizer: Any) -> int:
    """The newline token; raises when this tokenizer has no single newline token (use another boundary)."""
    ids = cue_ids(tokenizer, "\n")
    if len(ids) != 1 or tokenizer.decode(ids) != "\n":
        raise ValueError("this tokenizer has no single newline token: use boundary 'sentence' or 'every'")
    return ids[0]


def boundary_test(tokenizer: Any, boundary: str) -> Callable[[int], bool]:
    """token id → whether a policy check follows it ("every" counts tokens instead: always False here)."""
    if boundary == "every":
        return lambda _tok: False
    if boundary == "newline":
        nl = newline_id(tokenizer)
        return lambda tok: tok == nl
    if boundary != "sentence":
        raise ValueError(f"boundary {boundary!r} is unknown: use one of {', '.join(BOUNDARIES)}")
    seen: dict[int, bool] = {}

    def is_end(tok: int) -> bool:
        if tok not in seen:
            text = tokenizer.decode([tok])
            seen[tok] = "\n" in text or bool(_SENTENCE_END.search(text))
        return seen[tok]
    return is_end


@dataclass(kw_only=True)
class FormatOptions(Checked):
    """The reasoning-format options shared by `exit collect` and `exit run` (keyword-only, checked on creation)."""

    format: str = option("plain", f"reasoning format: {', '.join(FORMATS)} (think formats reason inside "
                                  "<think>…</think>)", choices=tuple(FORMATS))
    cue: str = option("", "answer cue after the reasoning (default: the format's)")
    boundary: str = option("", "where the policy checks: newline | sentence | every:N (default: the format's)")

    @property
    def reasoning_format(self) -> ReasoningFormat:
        return get_format(self.format, self.boundary, self.cue)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.reasoning_format  # an unknown boundary (or every:N without a number) fails here, before any work
