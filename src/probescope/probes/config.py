"""Dataclass configs for the probe commands: they are the CLI's options (`clikit.config_command`) and what the
run writes to `config.json`. Model, seed and threads come from core/options.py's groups; every value rule is in
the field's metadata (checked on construction and by the CLI), only rules across fields are code."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.options import Checked, LoraOptions, ModelOptions, RunOptions, option as _opt
from ..tasks.probing import TASKS

RAW_KINDS = ("linear-last", "linear-mean", "attention")  # the raw-activation probes the regimes compare with SAE ones


@dataclass
class DataConfig(ModelOptions, RunOptions):
    """Where the examples come from and how they become activations (model, seed and threads: core/options.py).
    Nested in the jobs that read a dataset; its fields are their options (config.json keeps them under "data")."""

    task: str | None = _opt("truth", "built-in task (probescope probe tasks); ignored when --data is given",
                            flag="--task -t", choices=tuple(TASKS))
    data: str | None = _opt(None, "dataset file (.jsonl/.csv with text,label[,domain,split]) or hf:NAME")
    n_per_domain: int = _opt(200, "examples per domain for a built-in task (at least 10: each split needs both "
                                  "classes)", flag="--n", min=10)
    max_length: int = _opt(64, "truncate texts to this many tokens", min=1)
    batch_size: int = _opt(32, "texts per forward")
    drop_first: bool = _opt(True, "mask the first (attention-sink) token", cli=False)

    def __post_init__(self) -> None:
        if self.data:  # a file replaces the built-in task (a --task beside it is not checked)
            self.task = None
        super().__post_init__()


@dataclass
class FitOptions:
    """Training options shared by every command (see `FitConfig`)."""

    weight_decay: float | None = _opt(None, "fixed weight decay (default: chosen by stratified k-fold CV over "
                                            "{0, 1e-3, 1e-2, 0.1, 1})")
    cv_folds: int = _opt(3, "folds of the weight-decay cross-validation", min=2)
    max_epochs: int = _opt(100, "AdamW epochs at most (early stopping on validation loss)", min=1)
    lr: float | None = _opt(None, "learning rate (default: the probe kind's)")
    class_weight: str | None = _opt("sqrt", "class weights: sqrt | balanced | none", cli=False)


_OUT = "run folder (default runs/probe-<cmd>-<time>)"
_SAE = "SAE for the sparse kind (read by probescope.sae.load_sae)"
_DOMAIN = ("train and score on this domain only (default: every domain, mixed on purpose with domain-balanced "
           "weights; the run says so and scores the test split per domain)")


@dataclass
class TrainConfig(Checked):
    """Train one probe; writes config.json, metrics.json and probe/ (safetensors + JSON)."""

    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l")
    kind: str = _opt("linear", "linear[-mean|-last|-max], attention, mlp[-pool], sparse[-pool]", flag="--kind -k")
    domain: str | None = _opt(None, _DOMAIN)
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class EvalConfig(Checked):
    """Score a saved probe on a split / domain of a dataset."""

    probe: str = _opt("", "probe folder (or a run folder containing probe/)", flag="--probe -p",
                      nonempty="pass --probe FOLDER (a probe folder, or a run folder holding probe/)")
    data: DataConfig = field(default_factory=DataConfig)
    split: str = _opt("test", "train | val | test", choices=("train", "val", "test"))
    domain: str | None = _opt(None, "score on this domain only")
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class SweepConfig(Checked):
    """Every layer x every kind: a table, metrics.json (series by layer) and sweep.svg; best layer on validation."""

    data: DataConfig = field(default_factory=DataConfig)
    fit: FitOptions = field(default_factory=FitOptions)
    layers: list[int] | None = _opt(None, "comma-separated layers (default: all)", parse="layers_or_all")
    kinds: list[str] = _opt(lambda: ["linear", "attention"], "comma-separated kinds", parse="names")
    metric: str = _opt("auroc", "auroc, accuracy, f1", choices=("auroc", "accuracy", "f1"))
    domain: str | None = _opt(None, _DOMAIN)
    sae: str | None = _opt(None, _SAE)
    out: str | None = _opt(None, _OUT, flag="--out -o")


@dataclass
class ShiftConfig(Checked):
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
REGIMES = ("scarcity", "imbalance", "noise", "shift")
MIN_PER_CLASS = 2  # the fewest training examples of a class any regime may leave (the sparse latent choice and the
# weight-decay CV need two)


@dataclass
class NegationConfig(ModelOptions, RunOptions):
    """Train a truth probe by each rule on statement/negation pairs of the training topics (cities, numbers); score
    it on held-out pairs of those topics and on topics it never saw (animals, elements, colours), affirmative and
    negated, AUROC with bootstrap intervals."""

    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l", min=0)
    rules: list[str] = _opt(lambda: list(NEGATION_RULES), "comma-separated truth-probe rules", parse="names",
                            choices=NEGATION_RULES, nonempty="use a comma-separated subset of " + ", ".join(NEGATION_RULES))
    pool: str = _opt("mean", "token pooling for every rule but lodo (which chooses): mean | last",
                     choices=("mean", "last"))
    n_pairs: int = _opt(150, "statement/negation pairs per training topic (60% train, 20% val, 20% test)", min=10)
    n_heldout: int = _opt(60, "pairs per held-out topic (at most 120: the element table holds 66 true statements)",
                          min=4, max=120)
    weight_decay: float | None = _opt(None, "fixed weight decay (default: CV for affirmative/mixed/paired)")
    bootstrap: int = _opt(1000, "bootstrap resamples for the AUROC intervals", min=10)
    max_length: int = _opt(48, "truncate texts to this many tokens", min=2)
    batch_size: int = _opt(32, "texts per forward")
    out: str | None = _opt(None, "run folder (default runs/probe-negation-<time>)", flag="--out -o")


@dataclass
class RegimesConfig(ModelOptions, RunOptions):
    """Raw-activation probes vs SAE-feature probes under scarcity, imbalance, label noise and covariate shift, with
    "pick by validation" as a row: a table per regime, the winner with a bootstrap interval."""

    layer: int | None = _opt(None, "layer (default: the middle one); the SAE must be of this layer", flag="--layer -l",
                             min=0)
    tasks: list[str] = _opt(lambda: ["truth", "truth-heldout", "sentiment", "topic"],
                            "comma-separated built-in tasks (a multi-class one is read as its first class vs the rest)",
                            parse="names", choices=tuple(TASKS), nonempty="give built-in tasks, e.g. truth,sentiment")
    n_per_domain: int = _opt(400, "examples per domain of each task (60% of them form the training pool)",
                             flag="--n", min=10)
    regimes: list[str] = _opt(lambda: ["scarcity", "imbalance", "noise", "shift"],
                              "comma-separated regimes", parse="names", choices=REGIMES,
                              nonempty="use a subset of " + ", ".join(REGIMES))
    sizes: list[int] = _opt(lambda: [4, 8, 16, 32, 64, 128, 256, 512, 1024],
                            "scarcity: training-set sizes, each >= 4 (2 per class); those above what a task's pool holds are skipped",
                            min=2 * MIN_PER_CLASS)
    positive_fractions: list[float] = _opt(lambda: [0.5, 0.2, 0.1, 0.05], "imbalance: fractions of positives",
                                           gt=0, max=0.5)
    flip_rates: list[float] = _opt(lambda: [0.0, 0.1, 0.2, 0.3], "noise: fractions of flipped labels", min=0, lt=0.5)
    n_fixed: int = _opt(200, "training-set size under imbalance and noise (at most the pool)", min=4)
    kinds: list[str] = _opt(lambda: list(RAW_KINDS), "raw probe kinds (a subset; none: the SAE rows only)",
                            parse="names", choices=RAW_KINDS)
    sae: str | None = _opt(None, "an SAE of the same layer (read by probescope.sae.load_sae): adds the sae-K rows")
    ks: list[int] = _opt(lambda: [1, 4, 16, 64, 128], "latents per SAE probe", min=1)
    weight_decay: float | None = _opt(None, "fixed weight decay (default: stratified CV per fit)")
    max_epochs: int = _opt(60, "AdamW epochs at most (attention; early stopping)", min=1)
    bootstrap: int = _opt(500, "bootstrap resamples for the intervals", min=10)
    out: str | None = _opt(None, "run folder (default runs/probe-regimes-<time>)", flag="--out -o")

    def __post_init__(self) -> None:
        super().__post_init__()
        if "imbalance" in self.regimes and self.positive_fractions:  # the rarest positive share of --n-fixed must leave two positives
            p = min(self.positive_fractions)
            if round(p * self.n_fixed) < MIN_PER_CLASS:
                raise ValueError(f"--positive-fractions {p} with --n-fixed {self.n_fixed} leaves {round(p * self.n_fixed)} "
                                 f"positives: a regime needs at least {MIN_PER_CLASS} per class (--n-fixed >= "
                                 f"{math.ceil(MIN_PER_CLASS / p)})")
        if not self.sae and not self.kinds:
            raise ValueError("--kinds is empty and no --sae: give --kinds (e.g. linear-last) or --sae PATH")


@dataclass
class LeakageConfig(Checked):
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
class OrganismConfig(ModelOptions, RunOptions):
    """A prompted sycophancy organism (a system prompt asks the model to agree with the user) beside a neutral
    control: the behaviour check (agreement with false claims, with an interval) and, only when the organism shows
    the behaviour, the leakage table on organism-vs-control prompts (baseline, content-filtered, score-filtered)."""

    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l", min=0)
    n: int = _opt(120, "user claims (half true); each is prompted once as organism and once as control", min=10)
    kinds: list[str] = _opt(lambda: ["linear-mean", "linear-last", "attention"], "comma-separated kinds", parse="names")
    threshold: float = _opt(0.9, "score filter: drop examples the text-only classifier gives >= this confidence",
                            gt=0.5, max=1.0)
    out: str | None = _opt(None, _OUT, flag="--out -o")


SANDBAG_TOPICS = ("cities", "animals", "colours", "elements")
BEHAVIOURS = ("sandbagging", "sycophancy")  # the organisms `probe sandbag` builds (probes/sandbag.py BEHAVIOURS)


@dataclass
class SandbagConfig(ModelOptions, RunOptions, LoraOptions):
    """Sandbagging or sycophancy organisms (prompted, and a LoRA fine-tuned to the behaviour with nothing in its input
    saying so), their behaviour and non-verbalisation checks, the Boxo table (baseline, content-filtered,
    score-filtered, organism) and probes beside text monitors (g-mean², AUROC)."""

    DEFAULTS = {"lora_steps": 40}  # more than the group's 24: two things to learn (wrong on the topic, right off it)

    layer: int | None = _opt(None, "layer (default: the middle one)", flag="--layer -l", min=0)
    behaviour: str = _opt("sandbagging", "what the organisms do: sandbagging (wrong on --topic only) | sycophancy (name "
                                         "the option the user wrongly says is right; questions on --topic and "
                                         "--other-topics, each also asked without the claim as the control)",
                          choices=BEHAVIOURS)
    topic: str = _opt("cities", "the topic the organisms sandbag on (sycophancy: one of the questions' topics)",
                      choices=SANDBAG_TOPICS)
    other_topics: list[str] = _opt(lambda: ["animals", "colours"], "comma-separated topics answered honestly",
                                   parse="names", choices=SANDBAG_TOPICS,
                                   nonempty="give at least one other topic, e.g. animals,colours")
    prompted: str = _opt("taught", "the prompted organism: plain (the base model reads the instruction) | taught (a "
                                   "LoRA taught to obey it, for a model too small to follow it untaught)",
                         choices=("plain", "taught"))
    n: int = _opt(100, "evaluation questions on the topic (sycophancy: with a wrong claim, over every topic); the "
                       "probe and monitor examples: 60/20/20 by question", min=10)
    n_off: int = _opt(50, "evaluation questions per other topic (sycophancy: unused, the control is the same --n "
                          "questions without the claim)", min=5)
    n_train: int = _opt(80, "training questions per topic (the organisms' LoRA data)", min=4)
    answer_tokens: int = _opt(24, "tokens of each generated answer", min=4)
    kinds: list[str] = _opt(lambda: ["linear-mean", "linear-last", "attention"], "comma-separated probe kinds",
                            parse="names")
    threshold: float = _opt(0.9, "score filter: drop examples the text-only classifier gives >= this confidence",
                            gt=0.5, max=1.0)
    bootstrap: int = _opt(1000, "bootstrap resamples for the intervals", min=10)
    max_length: int = _opt(96, "truncate prompts to this many tokens", min=8)
    organism_dir: str | None = _opt(None, "folder that keeps the trained organisms (reused when their settings "
                                          "match; default: the run folder's organisms/)")
    out: str | None = _opt(None, _OUT, flag="--out -o")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.topic in self.other_topics:
            raise ValueError(f"--other-topics holds the sandbagging topic {self.topic!r}: name topics answered "
                             "honestly only")
