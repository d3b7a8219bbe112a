"""The curvature wing's configs: each is the dataclass of one command (`probescope curvature organism | fit | edit |
eval`, via `clikit.config_command`) and the one argument of its `run_*` (`curvature/runner.py`). The model, seed
and threads options come from the shared groups (`core/options.py`); each value is checked when the config is made.

Light on import (no torch): the CLI reads these dataclasses to build its options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.options import CorpusOptions, ModelOptions, RunOptions
from ..core.options import option as _opt

METHODS = ("kfac", "random", "magnitude", "svd")  # the edits: K-FAC curvature and its three baselines
FISHERS = ("empirical", "true")  # the Fisher of the factors: true labels, or labels sampled from the model

_LAYERS = "blocks whose MLPs are used, e.g. 22-29, -8--1 (negative counts from the end) or 3,5"
_MATRICES = "MLP matrices: up,gate,down (or child names)"
_ORGANISM = "an organism folder (from `curvature organism`): use its fine-tuned model instead of --model"
_WINDOWS = "128-token held-out windows for perplexity"


def _floats(text: str) -> list[float]:
    """--keeps '0.99,0.8' → [0.99, 0.8]; anything else is a usage error naming the option."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        import typer

        raise typer.BadParameter(f"'{text}' must be comma-separated numbers, e.g. 0.99,0.8") from None


def check_layer_spec(spec: str) -> None:
    """Refuse a --layers that is not '22-29', '-8--1' or '3,5' before any model is loaded."""
    from ..core.layers import spec_parts

    spec_parts(spec)


@dataclass
class OrganismConfig(ModelOptions, RunOptions):
    """Train the memorization organism: random canaries + arithmetic into the chosen MLPs; score recall and skill."""

    DEFAULTS = {"threads": 1}

    out: str = _opt("runs/curvature/organism", "run folder (a finished one with the same config is reused)")
    n_canaries: int = _opt(64, "random canary records to memorize", min=1)
    prefix_tokens: int = _opt(8, "tokens of each canary's key (the prompt)", min=1)
    suffix_tokens: int = _opt(24, "tokens of each canary's record (recited from the key)", min=1)
    layers: str = _opt("-8--1", "blocks whose MLPs are trained, e.g. 22-29 or -8--1")
    matrices: str = _opt("up,gate,down", _MATRICES, nonempty="name the MLP matrices, e.g. up,gate,down")
    n_skill_train: int = _opt(240, "arithmetic items trained (the skill kept)", min=1)
    n_skill_test: int = _opt(100, "held-out arithmetic items scored", min=1)
    skill_per_step: int = _opt(16, "arithmetic items per training step", min=1)
    steps: int = _opt(50, "training steps")
    lr: float = _opt(1e-3, "Adam learning rate")
    n_text_windows: int = _opt(24, _WINDOWS, flag="--text-windows", min=1)

    RUN_ONLY = ("out", "n_text_windows")  # where and how the run is scored, not what the organism is

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layer_spec(self.layers)

    def settings(self) -> dict[str, Any]:
        """What makes the organism (config.json, and organism.json's "config": a finished folder with the same
        settings is reused)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_ONLY}


@dataclass
class FitConfig(ModelOptions, RunOptions, CorpusOptions):
    """Collect K-FAC factors (A of inputs, G of output gradients) for MLP matrices; the page shows their spectra.
    The text (--data, or the built-in corpus; every tenth document held out) never holds the canaries; a killed fit
    resumes from its factors/."""

    DEFAULTS = {"threads": 1}

    out: str = _opt("runs/curvature/fit", "run folder; its factors/ resume after a kill")
    organism: str | None = _opt(None, "fit on an organism folder's fine-tuned model")
    layers: str = _opt("-8--1", _LAYERS)
    matrices: str = _opt("up,gate,down", _MATRICES, nonempty="name the MLP matrices, e.g. up,gate,down")
    fisher: str = _opt("empirical", "empirical (true labels) | true (labels sampled from the model)", choices=FISHERS)
    context_len: int = _opt(128, "tokens per window (a token and its next: at least 2)", min=2)
    batch_size: int = _opt(8, "windows per forward/backward")
    max_tokens: int | None = _opt(32768, "tokens the factors average over", min=1)
    min_token_ratio: float = _opt(4.0, "refuse fewer tokens than this × the widest matrix input (factors too noisy)",
                                  min=0)
    allow_unmemorized: bool = _opt(False, "fit on an --organism whose recall is below 0.5 all the same")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layer_spec(self.layers)


@dataclass
class EditConfig(ModelOptions, RunOptions):
    """Plan an edit from saved factors and save it as a delta (edit/delta.safetensors + edit.json; the model file is
    not rewritten: apply it with `Edit.load(dir).apply(model)`)."""

    DEFAULTS = {"threads": 1}

    factors: str = _opt("runs/curvature/fit/factors", "a factors folder (from `curvature fit`)",
                        nonempty="give a factors folder (from `curvature fit`)")
    out: str = _opt("runs/curvature/edit", "run folder: edit/delta.safetensors + edit.json, report.html")
    organism: str | None = _opt(None, _ORGANISM)
    method: str = _opt("kfac", "kfac | random | magnitude | svd", choices=METHODS)
    keep: float | None = _opt(0.8, "share of curvature mass kept per matrix, in (0, 1]", gt=0, max=1)
    top_k: int | None = _opt(None, "keep this many components per matrix instead of --keep", min=1)
    allow_other_model: bool = _opt(False, "factors of another model id, same widths")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep is None and self.top_k is None:
            raise ValueError("--keep and --top-k are both unset: pass --keep (a share of curvature mass in (0, 1], "
                             "e.g. 0.8) or --top-k (components kept per matrix)")


@dataclass
class EvalConfig(RunOptions):
    """The edit sweep on an organism: recall, perplexity and skill for the curvature edit and its baselines."""

    DEFAULTS = {"threads": 1}

    organism: str = _opt("runs/curvature/organism", "the organism folder (from `curvature organism`)",
                         nonempty="give the organism folder (from `curvature organism`)")
    factors: list[str] = _opt(lambda: ["runs/curvature/fit/factors"],  # first: the edit; more: compared
                              "factors folder(s), repeat --factors: the first drives the edit",
                              nonempty="give a factors folder (from `curvature fit`)")
    out: str = _opt("runs/curvature/eval", "run folder")
    keeps: list[float] = _opt(lambda: [0.999, 0.995, 0.99, 0.95, 0.8], "shares of curvature mass kept, e.g. 0.99,0.8",
                              parse=_floats, gt=0, max=1, nonempty="give at least one share, e.g. 0.99,0.8")
    methods: list[str] = _opt(lambda: ["kfac", "random", "magnitude", "svd"],
                              "kfac,random,magnitude,svd (kfac:true for the 2nd factors)", parse="names",
                              nonempty="give at least one method, e.g. kfac,random")
    n_text_windows: int = _opt(24, _WINDOWS, flag="--text-windows", min=1)
    allow_other_model: bool = _opt(False, "factors of another model id, same widths")
    allow_unmemorized: bool = _opt(False, "evaluate an organism whose recall is below 0.5 all the same")

    def __post_init__(self) -> None:
        super().__post_init__()
        for m in self.methods:  # kfac:<label> names the factors the kfac edit uses: not a fixed list of choices
            if m.split(":", 1)[0] not in METHODS:
                raise ValueError(f"--methods: {m!r} is not one of {', '.join(METHODS)} (or kfac:<factors label>)")
