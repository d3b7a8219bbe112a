"""Dataclass configs for the probe commands: they are the CLI's options (`clikit.config_command`) and what the
run writes to `config.json`."""

from __future__ import annotations

from dataclasses import dataclass, field


from ..core.options import option as _opt


@dataclass
class DataConfig:
    """Where the examples come from and how they become activations."""

    model: str = _opt("smollm2-135m", "built-in model name or local path", flag="--model -m")
    task: str | None = _opt("truth", "built-in task (truth, sentiment, topic); ignored when --data is given",
                            flag="--task -t")
    data: str | None = _opt(None, "dataset file (.jsonl/.csv with text,label[,domain,split]) or hf:NAME")
    n_per_domain: int = _opt(200, "examples per domain for a built-in task", flag="--n")
    max_length: int = _opt(64, "truncate texts to this many tokens")
    batch_size: int = _opt(32, "texts per forward")
    drop_first: bool = _opt(True, "mask the first (attention-sink) token", cli=False)
    seed: int = _opt(0, "seed of the task and the splits")

    def __post_init__(self) -> None:
        if self.data:  # a file replaces the built-in task
            self.task = None


@dataclass
class FitOptions:
    """Training options shared by every command (see `FitConfig`)."""

    weight_decay: float | None = _opt(None, "fixed weight decay (default: chosen by stratified k-fold CV over "
                                            "{0, 1e-3, 1e-2, 0.1, 1})")
    cv_folds: int = _opt(3, "folds of the weight-decay cross-validation")
    max_epochs: int = _opt(100, "AdamW epochs at most (early stopping on validation loss)")
    lr: float | None = _opt(None, "learning rate (default: the probe kind's)")
    class_weight: str | None = _opt("sqrt", "class weights: sqrt | balanced | none", cli=False)


_OUT = "run folder (default runs/probe-<cmd>-<time>)"
_SAE = "SAE for the sparse kind (read by probescope.sae.load_sae)"
_DOMAIN = ("train and score on this domain only (default: every domain, mixed on purpose with domain-balanced "
           "weights; the run says so and scores the test split per domain)")


@dataclass
class TrainConfig:
    """Train one probe; writes config.json, metrics.json and probe/ (safetensors + JSON)."""

    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l")
    kind: str = _opt("linear", "linear[-mean|-last|-max], attention, mlp[-pool], sparse[-pool]", flag="--kind -k")
    domain: str | None = _opt(None, _DOMAIN)
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class EvalConfig:
    """Score a saved probe on a split / domain of a dataset."""

    probe: str = _opt("", "probe folder (or a run folder containing probe/)", flag="--probe -p")
    data: DataConfig = field(default_factory=DataConfig)
    split: str = _opt("test", "train | val | test")
    domain: str | None = _opt(None, "score on this domain only")
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class SweepConfig:
    """Every layer x every kind: a table, metrics.json (series by layer) and sweep.svg; best layer on validation."""

    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layers: list[int] | None = _opt(None, "comma-separated layers (default: all)", parse="layers_or_all")
    kinds: list[str] = _opt(lambda: ["linear", "attention"], "comma-separated kinds", parse="names")
    metric: str = _opt("auroc", "auroc, accuracy, f1")
    domain: str | None = _opt(None, _DOMAIN)
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class ShiftConfig:
    """Train on domain A, score in-domain and on domain B, for every kind, in one table."""

    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l")
    kinds: list[str] = _opt(lambda: ["linear-mean", "linear-last", "linear-max", "attention", "mlp"],
                            "comma-separated kinds", parse="names")
    train_domain: str | None = _opt(None, "domain A (default: the task's)")
    eval_domain: str | None = _opt(None, "domain B (default: the task's)")
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")
