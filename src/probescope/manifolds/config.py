"""The manifold jobs' configs: each dataclass is its command (`probescope manifold find | move`).

Numeric bounds are declared in the fields' metadata (core/checks.py) and checked on construction too, so the
Python API refuses what the CLI refuses, with the same message."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_values
from ..core.options import option
from .concepts import CONCEPTS, MOVE_TASKS

MODEL_HELP = "built-in name, HF folder or .gguf file"


def _check_model(model: str) -> None:
    if not model:
        raise ValueError("--model '' : give a built-in name (e.g. smollm2-135m), an HF folder or a .gguf file")


@dataclass
class FindConfig:
    """Find a concept's shape per layer: mean activation per value, PCA, circle or curve fit, LOO error, dims."""

    model: str = option("smollm2-135m", MODEL_HELP)
    concept: str = option("days", "built-in concept (" + ", ".join(CONCEPTS) + ") or a .jsonl/.csv with text, "
                                  "position (character offset), value")
    n: int = option(280, "examples to generate (built-in concepts)", min=1)
    period: int = option(0, "period of a cyclic concept read from a file (0: ordinal; built-ins know theirs)",
                         min=3, also=(0,))
    layers: list[int] | None = option(None, "layers to read, e.g. 4,8,12 (default: all)", parse="layers_or_all")
    k: int = option(5, "PCA axes of the per-value means that the shapes are fitted in (a circle needs 2)", min=2)
    min_per_value: int = option(4, "fewest examples a value may have (the two-fold read-out needs 2)", min=2)
    n_shuffles: int = option(10, "shuffled-value draws for the baseline every score is shown beside", min=1)
    seed: int = option(0, "seed of the generated examples and the shuffles")
    batch_size: int = option(32, "texts per forward")
    threads: int = option(0, "torch threads (0: leave torch's setting)")
    out: str = option("runs/manifold-find", "run folder", flag="--out -o")

    def __post_init__(self) -> None:
        check_values(self)
        _check_model(self.model)


@dataclass
class MoveConfig:
    """Move the concept along its circle (Engels et al. 2024) per layer and strength, beside every baseline."""

    model: str = option("smollm2-135m", MODEL_HELP)
    task: str = option("next-day", "prompts: next-day ('If today is {Day}, then tomorrow is'), next-month, or "
                                   "Engels et al.'s arithmetic days ('{N} days from {Day} is') and months",
                       choices=tuple(MOVE_TASKS))
    layers: list[int] | None = option(None, "layers to edit one at a time (default: all)", parse="layers_or_all")
    layer_sets: str = option("", "layers edited together, e.g. '6+8+10,12+14' (each set is one more row)")
    strengths: list[float] = option(lambda: [1.0, 2.0], "radius scales of the circle point, e.g. 1,2", min=0)
    k: int = option(5, "PCA axes of the per-value means that the circle is fitted in (a circle needs 2)", min=2)
    limit: int = option(0, "(prompt, target) rows to score, drawn at random (0: all)", min=0)
    seed: int = option(0, "seed of the row draw")
    batch_size: int = option(64, "rows per forward")
    threads: int = option(0, "torch threads (0: leave torch's setting)")
    out: str = option("runs/manifold-move", "run folder", flag="--out -o")

    def __post_init__(self) -> None:
        check_values(self)
        _check_model(self.model)
        if not self.strengths:
            raise ValueError("--strengths is empty: give at least one radius scale, e.g. 1,2")
        self.sets  # parse now: a bad set is an error before any work

    @property
    def sets(self) -> list[list[int]]:
        out = []
        for part in (p.strip() for p in self.layer_sets.split(",")):
            if not part:
                continue
            try:
                out.append([int(x) for x in part.split("+")])
            except ValueError:
                raise ValueError(f"--layer-sets {self.layer_sets!r}: write sets as '6+8+10,12+14'") from None
        return out
