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


NEGATION_RULES = ("affirmative", "mixed", "lodo", "ccs", "paired")


@dataclass
class NegationConfig:
    """Train a truth probe by each rule on statement/negation pairs of the training topics (cities, numbers); score
    it on held-out pairs of those topics and on topics it never saw (animals, elements, colours), affirmative and
    negated, AUROC with bootstrap intervals."""

    model: str = _opt("smollm2-135m", "built-in model name or local path", flag="--model -m")
    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l", min=0)
    rules: list[str] = _opt(lambda: list(NEGATION_RULES), f"comma-separated rules: {', '.join(NEGATION_RULES)}", parse="names")
    pool: str = _opt("mean", "token pooling for every rule but lodo (which chooses): mean | last",
                     choices=("mean", "last"))
    n_pairs: int = _opt(150, "statement/negation pairs per training topic (60% train, 20% val, 20% test)", min=10)
    n_heldout: int = _opt(60, "pairs per held-out topic (at most 120: the element table holds 66 true statements)",
                          min=4, max=120)
    weight_decay: float | None = _opt(None, "fixed weight decay (default: CV for affirmative/mixed/paired)")
    bootstrap: int = _opt(1000, "bootstrap resamples for the AUROC intervals", min=10)
    max_length: int = _opt(48, "truncate texts to this many tokens", min=2)
    batch_size: int = _opt(32, "texts per forward")
    seed: int = _opt(0, "seed of the pairs, splits and fits")
    out: str | None = _opt(None, "run folder (default runs/probe-negation-<time>)", flag="--out -o")


@dataclass
class RegimesConfig:
    """Raw-activation probes vs SAE-feature probes under scarcity, imbalance, label noise and covariate shift, with
    "pick by validation" as a row: a table per regime, the winner with a bootstrap interval."""

    model: str = _opt("smollm2-135m", "built-in model name or local path", flag="--model -m")
    layer: int | None = _opt(None, "layer (default: the middle one); the SAE must be of this layer", flag="--layer -l",
                             min=0)
    tasks: list[str] = _opt(lambda: ["truth", "truth-heldout", "sentiment", "topic"],
                            "comma-separated built-in tasks (a multi-class one is read as its first class vs the rest)",
                            parse="names")
    n_per_domain: int = _opt(400, "examples per domain of each task (60% of them form the training pool)",
                             flag="--n", min=10)
    regimes: list[str] = _opt(lambda: ["scarcity", "imbalance", "noise", "shift"],
                              "comma-separated regimes: scarcity, imbalance, noise, shift", parse="names")
    sizes: list[int] = _opt(lambda: [4, 8, 16, 32, 64, 128, 256, 512, 1024],
                            "scarcity: training-set sizes, each >= 4 (2 per class); those above what a task's pool holds are skipped",
                            min=4)
    positive_fractions: list[float] = _opt(lambda: [0.5, 0.2, 0.1, 0.05], "imbalance: fractions of positives",
                                           gt=0, max=0.5)
    flip_rates: list[float] = _opt(lambda: [0.0, 0.1, 0.2, 0.3], "noise: fractions of flipped labels", min=0, lt=0.5)
    n_fixed: int = _opt(200, "training-set size under imbalance and noise (at most the pool)", min=4)
    kinds: list[str] = _opt(lambda: ["linear-last", "linear-mean", "attention"], "raw probe kinds: linear-last, "
                            "linear-mean, attention", parse="names")
    sae: str | None = _opt(None, "an SAE of the same layer (read by probescope.sae.load_sae): adds the sae-K rows")
    ks: list[int] = _opt(lambda: [1, 4, 16, 64, 128], "latents per SAE probe", min=1)
    weight_decay: float | None = _opt(None, "fixed weight decay (default: stratified CV per fit)")
    max_epochs: int = _opt(60, "AdamW epochs at most (attention; early stopping)", min=1)
    bootstrap: int = _opt(500, "bootstrap resamples for the intervals", min=10)
    seed: int = _opt(0, "seed of the tasks, the draws and the fits")
    out: str | None = _opt(None, "run folder (default runs/probe-regimes-<time>)", flag="--out -o")


@dataclass
class LeakageConfig:
    """Probe AUROC with and without the tokens that verbalise the behaviour: baseline, content-filtered (spans masked
    or dropped) and score-filtered (examples a text-only classifier already separates dropped), per probe kind."""

    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l")
    kinds: list[str] = _opt(lambda: ["linear-mean", "linear-last", "attention"], "comma-separated kinds", parse="names")
    domain: str | None = _opt(None, "train and score on this domain only (default: every domain, balanced)")
    keywords: list[str] = _opt(list, "words or phrases that verbalise the behaviour (repeatable); without them the "
                               "data file's 'spans' column ([[start, end], ...] character offsets) is used")
    filter: str = _opt("mask", "content filter: mask (the probe skips the span tokens) | drop (cut from the text)",
                       choices=("mask", "drop"))
    threshold: float = _opt(0.9, "score filter: drop examples the text-only classifier gives >= this confidence",
                            gt=0.5, max=1.0)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class OrganismConfig:
    """A prompted sycophancy organism (a system prompt asks the model to agree with the user) beside a neutral
    control: the behaviour check (agreement with false claims, with an interval) and, only when the organism shows
    the behaviour, the leakage table on organism-vs-control prompts (baseline, content-filtered, score-filtered)."""

    model: str = _opt("smollm2-135m", "built-in model name or local path", flag="--model -m")
    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l", min=0)
    n: int = _opt(120, "user claims (half true); each is prompted once as organism and once as control", min=10)
    kinds: list[str] = _opt(lambda: ["linear-mean", "linear-last", "attention"], "comma-separated kinds", parse="names")
    threshold: float = _opt(0.9, "score filter: drop examples the text-only classifier gives >= this confidence",
                            gt=0.5, max=1.0)
    seed: int = _opt(0, "seed of the claims, splits and fits")
    out: str | None = _opt(None, _OUT, flag="--out -o")
