"""The curvature wing's jobs: the config dataclasses (their fields are the options of `probescope curvature organism |
fit | edit | eval`, via `clikit.config_command`) and one `run_*_job` each, taking only its job dataclass.

Light on import (no torch): the CLI reads these dataclasses to build its options; the work is in `runner`.
`OrganismConfig`, `FitConfig`, `EditConfig` and `EvalConfig` are re-exported where they used to live
(`curvature.organism`, `curvature.runner`), and `run_organism | run_fit | run_edit | run_eval` keep their signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from ..core.options import option as _opt


def _floats(text: str) -> list[float]:
    """--keeps '0.99,0.8' → [0.99, 0.8]; anything else is a usage error naming the option."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        import typer

        raise typer.BadParameter(f"'{text}' must be comma-separated numbers, e.g. 0.99,0.8") from None


def _quiet() -> Any:
    """Set from --quiet / --json by the CLI; not an option of its own."""
    return field(default=False, metadata={"cli": False})


_MODEL = "built-in model name, HF folder or .gguf file"
_LAYERS = "blocks whose MLPs are used, e.g. 22-29, -8--1 (negative counts from the end) or 3,5"
_MATRICES = "MLP matrices: up,gate,down (or child names)"
_ORGANISM = "an organism folder (from `curvature organism`): use its fine-tuned model instead of --model"
_THREADS = "torch threads for the job (0: leave torch's setting)"


# ---------------------------------------------------------------------------------------------------------- configs
@dataclass
class OrganismConfig:
    """The memorization organism (each field doubles as a CLI option)."""

    model: str = _opt("smollm2-135m", _MODEL)
    n_canaries: int = _opt(64, "random canary records to memorize")
    prefix_tokens: int = _opt(8, "tokens of each canary's key (the prompt)")
    suffix_tokens: int = _opt(24, "tokens of each canary's record (recited from the key)")
    layers: str = _opt("-8--1", "blocks whose MLPs are trained, e.g. 22-29 or -8--1")
    matrices: str = _opt("up,gate,down", _MATRICES)
    n_skill_train: int = _opt(240, "arithmetic items trained (the skill kept)")
    n_skill_test: int = _opt(100, "held-out arithmetic items scored")
    skill_per_step: int = _opt(16, "arithmetic items per training step")
    steps: int = _opt(60, "training steps")
    lr: float = _opt(1e-3, "Adam learning rate")
    seed: int = _opt(0, "seed of the canaries, the items and training")
    threads: int = _opt(2, _THREADS)


@dataclass
class FitConfig:
    """`probescope curvature fit`: K-FAC factors of MLP matrices over text that never holds the canaries."""

    out: str = _opt("runs/curvature/fit", "run folder; its factors/ resume after a kill")
    model: str = _opt("smollm2-135m", _MODEL)
    organism: str | None = _opt(None, "fit on an organism folder's fine-tuned model")
    layers: str = _opt("-8--1", _LAYERS)
    matrices: str = _opt("up,gate,down", _MATRICES)
    data: str | None = _opt(None, "JSONL/CSV/TXT; default: the project's corpus minus its held-out tenth")
    fisher: str = _opt("empirical", "empirical (true labels) | true (labels sampled from the model)")
    context_len: int = _opt(128, "tokens per window")
    batch_size: int = _opt(8, "windows per forward/backward")
    max_tokens: int | None = _opt(32768, "tokens the factors average over")
    min_token_ratio: float = _opt(4.0, "refuse fewer tokens than this × the widest matrix input (factors too noisy)")
    seed: int = _opt(0, "seed of the window order (and the sampled labels of the true Fisher)")
    allow_unmemorized: bool = _opt(False, "fit on an --organism whose recall is below 0.5 all the same")
    threads: int = _opt(1, _THREADS)


@dataclass
class EditConfig:
    """`probescope curvature edit`: plan an edit from saved factors and save it as a delta (the model file is not
    rewritten; apply it with `Edit.load(dir).apply(model)`)."""

    factors: str = _opt("runs/curvature/fit/factors", "a factors folder (from `curvature fit`)")
    out: str = _opt("runs/curvature/edit", "run folder: edit/delta.safetensors + edit.json, report.html")
    model: str = _opt("smollm2-135m", _MODEL)
    organism: str | None = _opt(None, _ORGANISM)
    method: str = _opt("kfac", "kfac | random | magnitude | svd")
    keep: float | None = _opt(0.8, "share of curvature mass kept per matrix, in (0, 1]")
    top_k: int | None = _opt(None, "keep this many components per matrix instead of --keep")
    seed: int = _opt(0, "seed of the random baseline")
    allow_other_model: bool = _opt(False, "factors of another model id, same widths")
    threads: int = _opt(1, _THREADS)


@dataclass
class EvalConfig:
    """`probescope curvature eval`: the edit sweep on an organism (curvature edit vs baselines)."""

    organism: str = _opt("runs/curvature/organism", "the organism folder (from `curvature organism`)")
    factors: list[str] = _opt(lambda: ["runs/curvature/fit/factors"],  # first: the edit; more: compared
                              "factors folder(s), repeat --factors: the first drives the edit")
    out: str = _opt("runs/curvature/eval", "run folder")
    keeps: list[float] = _opt(lambda: [0.999, 0.995, 0.99, 0.95, 0.8], "shares of curvature mass kept, e.g. 0.99,0.8",
                              parse=_floats)
    methods: list[str] = _opt(lambda: ["kfac", "random", "magnitude", "svd"],
                              "kfac,random,magnitude,svd (kfac:true for the 2nd factors)", parse="names")
    n_text_windows: int = _opt(24, "128-token held-out windows for perplexity", flag="--text-windows")
    seed: int = _opt(0, "seed of the random baseline and the intervals")
    allow_other_model: bool = _opt(False, "factors of another model id, same widths")
    allow_unmemorized: bool = _opt(False, "evaluate an organism whose recall is below 0.5 all the same")
    threads: int = _opt(1, _THREADS)


# ---------------------------------------------------------------------------------------------------------- checks
def check_layer_spec(spec: str) -> None:
    """Refuse a --layers that is not '22-29', '-8--1' or '3,5' before any model is loaded."""
    from ..core.layers import spec_parts

    spec_parts(spec)


def check_method(method: str) -> None:
    from .edit import METHODS

    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------------------------------------------- jobs
@dataclass
class OrganismJob:
    """Train the memorization organism: random canaries + arithmetic into the chosen MLPs; score recall and skill."""

    out: str = _opt("runs/curvature/organism", "run folder (a finished one with the same config is reused)")
    organism: OrganismConfig = field(default_factory=lambda: OrganismConfig(steps=50, threads=1))
    n_text_windows: int = _opt(24, "128-token held-out windows for perplexity", flag="--text-windows")
    quiet: bool = _quiet()


def run_organism_job(job: OrganismJob) -> dict[str, Any]:
    """Train and score the organism into `job.out`; its metrics (base and organism: recall, skill, perplexity)."""
    from .runner import run_organism

    check_layer_spec(job.organism.layers)
    return run_organism(job.organism, job.out, quiet=job.quiet, n_text_windows=job.n_text_windows)


@dataclass
class FitJob:
    """Collect K-FAC factors (A of inputs, G of output gradients) for MLP matrices; the page shows their spectra."""

    fit: FitConfig = field(default_factory=FitConfig)
    quiet: bool = _quiet()

    @property
    def out(self) -> str:
        return self.fit.out


def run_fit_job(job: FitJob) -> dict[str, Any]:
    """Fit the factors into `job.fit.out`/factors (resumed after a kill); their summary and spectra."""
    from .factors import FactorConfig
    from .runner import run_fit

    check_layer_spec(job.fit.layers)
    f = job.fit  # refuse a bad --fisher, --context-len or --batch-size before the model is loaded
    FactorConfig(fisher=f.fisher, context_len=f.context_len, batch_size=f.batch_size, max_tokens=f.max_tokens,
                 min_token_ratio=f.min_token_ratio, seed=f.seed).validate()
    return run_fit(job.fit, quiet=job.quiet)


@dataclass
class EditJob:
    """Plan an edit from factors and save it as a delta (edit/delta.safetensors + edit.json)."""

    edit: EditConfig = field(default_factory=EditConfig)
    quiet: bool = _quiet()

    @property
    def out(self) -> str:
        return self.edit.out


def run_edit_job(job: EditJob) -> dict[str, Any]:
    """Plan and save the edit; its summary (share of components kept per matrix)."""
    from .edit import check_keep
    from .runner import run_edit

    check_method(job.edit.method)
    check_keep(None if job.edit.top_k is not None else job.edit.keep, job.edit.top_k)
    return run_edit(job.edit, quiet=job.quiet)


@dataclass
class EvalJob:
    """The edit sweep on an organism: recall, perplexity and skill for the curvature edit and its baselines."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    quiet: bool = _quiet()

    @property
    def out(self) -> str:
        return self.eval.out


def run_eval_job(job: EvalJob) -> dict[str, Any]:
    """Run the sweep into `job.eval.out`; its rows (method, keep: recall, perplexity, skill with intervals)."""
    from .runner import run_eval

    return run_eval(job.eval, quiet=job.quiet)
