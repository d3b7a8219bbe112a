"""Dataclass configs for the probe commands; the CLI fills them and writes them to `config.json`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where the examples come from and how they become activations."""

    model: str = "smollm2-135m"
    task: str | None = "truth"  # built-in task name (ignored when `data` is given)
    data: str | None = None  # .jsonl / .csv / hf:NAME
    n_per_domain: int = 200  # built-in tasks only
    max_length: int = 64
    batch_size: int = 32
    drop_first: bool = True  # mask the first (attention-sink) token
    seed: int = 0


@dataclass
class FitOptions:
    """Training options shared by every command (see `FitConfig`)."""

    weight_decay: float | None = None  # None: stratified k-fold CV over {0, 1e-3, 1e-2, 0.1, 1}
    cv_folds: int = 3
    max_epochs: int = 100
    lr: float | None = None
    class_weight: str | None = "sqrt"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layer: int | None = None  # None: the middle layer
    kind: str = "linear"  # linear[-mean|-last|-max], attention, mlp[-pool], sparse[-pool]
    domain: str | None = None  # train on one domain only
    sae: str | None = None  # SAE for the sparse kind
    out: str | None = None


@dataclass
class EvalConfig:
    probe: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "test"
    domain: str | None = None
    sae: str | None = None
    out: str | None = None


@dataclass
class SweepConfig:
    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layers: list[int] | None = None  # None: every layer
    kinds: list[str] = field(default_factory=lambda: ["linear", "attention"])
    metric: str = "auroc"
    domain: str | None = None
    sae: str | None = None
    out: str | None = None


@dataclass
class ShiftConfig:
    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layer: int | None = None
    kinds: list[str] = field(default_factory=lambda: ["linear-mean", "linear-last", "linear-max", "attention", "mlp"])
    train_domain: str | None = None  # None: the task's own (e.g. truth: affirmative -> negated)
    eval_domain: str | None = None
    sae: str | None = None
    out: str | None = None
