"""The data registry: every data set the project generates, behind `make(name, n, seed)` and `list_sets()`
(`probescope data list | show`); also the multiple-choice problems' own helpers (reasoning traces, prompts)."""

from .mcq import LETTERS, MCQProblem, build_prompt, generate, make_splits, trace
from .registry import list_sets, make

__all__ = ["LETTERS", "MCQProblem", "build_prompt", "generate", "list_sets", "make", "make_splits", "trace"]
