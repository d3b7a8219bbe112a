"""Generated task data (multiple-choice problems with reasoning traces) for fine-tuning and early exit."""

from .mcq import LETTERS, MCQProblem, build_prompt, generate, make_splits, trace

__all__ = ["LETTERS", "MCQProblem", "build_prompt", "generate", "make_splits", "trace"]
