"""The steering wing's jobs, one config dataclass each (its fields are the CLI's options) and one `run_*`:
make a vector, apply it, export it, sweep its multiplier, compare it with few-shot and LoRA (on sentiment
and on an ICL task).

Light on import (no torch): the CLI reads these dataclasses to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.options import Checked, LoraOptions, ModelOptions, RunOptions, SourceModelOptions, option as _opt
from ..tasks.icl import TASKS

POSITIONS = ("all", "prompt", "generated")  # where a vector acts (apply.py checks a tensor mask too)
MODES = ("add", "ablate", "ablate_add")
METHODS = ("mean_diff", "pca", "probe")  # how train.py aggregates the pair differences
READS = ("last", "span")
VECTOR_HELP = "folder written by `steer make`"


@dataclass
class EvalConfig(RunOptions):
    """A multiplier sweep: prompts to generate from, neutral texts to price the cost on."""

    multipliers: tuple[float, ...] = _opt((-8.0, -4.0, 0.0, 4.0, 8.0), "write as --multipliers=-1,0,1",
                                          nonempty="give at least one multiplier, e.g. --multipliers=-1,0,1")
    positions: str = _opt("all", "all | prompt | generated", choices=POSITIONS)
    mode: str = _opt("add", "add | ablate | ablate_add", choices=MODES)
    n_prompts: int = _opt(8, "held-out requests to generate from (effect)", min=1)
    n_neutral: int = _opt(12, "neutral texts to price the cost on (KL, perplexity)", min=1)
    max_new_tokens: int = _opt(24, "tokens per generation")
    samples_kept: int = _opt(3, "generations kept per multiplier on the page", min=0)


@dataclass
class CompareConfig(ModelOptions, RunOptions, LoraOptions):
    """Steering vector vs few-shot examples vs LoRA on up- or downbeat sentiment: one table."""

    DEFAULTS = {"threads": 1}

    direction: str = _opt("up", "up (upbeat) | down (downbeat)", choices=("up", "down"))
    layer: int = _opt(10, "block whose output the vector edits")
    multiplier: float = _opt(1.0, "sign included: use e.g. --multiplier=-1 for down")
    n_pairs: int = _opt(32, "contrastive pairs for the vector")
    n_shots: int = _opt(4, "few-shot examples in the prompt", min=0)
    n_prompts: int = _opt(8, "held-out requests (effect)", min=1)
    n_neutral: int = _opt(8, "neutral texts (cost)", min=1)
    max_new_tokens: int = _opt(20, "tokens per generation")
    lora_examples: int = _opt(32, "LoRA training examples", min=1)
    out: str = _opt("runs/steer-compare", "run folder")


@dataclass
class IclCompareConfig(ModelOptions, RunOptions, LoraOptions):
    """The pipes-vs-water table's ICL rows: on one generated ICL task, zero-shot vs an N-shot prompt vs its function
    vector vs its mean-difference task vector vs a LoRA, all learning from the same labelled examples."""

    DEFAULTS = {"threads": 1}

    task: str = _opt("antonym", "generated ICL task: antonym, capital, past, plural, next_letter, uppercase",
                     choices=tuple(TASKS))
    n_shots: int = _opt(5, "N: demonstrations in the prompt (and in the prompts the vectors are read from); the N-shot "
                           "row needs at least one", min=1)
    n_examples: int = _opt(16, "labelled examples every method learns from: the prompt's shots, the prompts the "
                               "vectors are read from, the LoRA's training set")
    n_queries: int = _opt(32, "held-out queries (effect: first-token accuracy), disjoint from the examples", min=2)
    n_neutral: int = _opt(8, "neutral texts (cost: KL, perplexity)", min=1)
    fv_top_k: int = _opt(10, "heads summed into the function vector", min=1)
    fv_screen: int = _opt(30, "heads measured exactly after the attribution screen (0: every head)", min=0)
    batch_size: int = _opt(64, "rows per forward")
    out: str = _opt("runs/steer-compare-icl", "run folder: metrics.json, table.md, report.html")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_examples <= self.n_shots:
            raise ValueError(f"--n-examples {self.n_examples} ≤ --n-shots {self.n_shots}: each prompt draws its N "
                             f"shots from the other examples; use --n-examples {self.n_shots + 1} or more")


@dataclass
class MakeConfig(ModelOptions, RunOptions):
    """Train a steering vector from contrastive pairs and save it (the folder is the run folder)."""

    out: str = _opt("runs/steer-vector", "run folder: steering.safetensors + steering.json, report.html")
    behaviour: str = _opt("sentiment", "built-in generated pairs: sentiment (--seed draws them)")
    pairs: str | None = _opt(None, 'JSONL of {"positive": ..., "negative": ...}')
    n_pairs: int = _opt(32, "generated pairs")
    layers: list[int] = _opt(lambda: [10], "comma-separated block indices",
                             nonempty="give at least one block index, e.g. --layers 10")
    method: str = _opt("mean_diff", "mean_diff | pca | probe", choices=METHODS)
    read: str = _opt("last", "last (token) | span (mean over the differing tokens)", choices=READS)
    batch_size: int = _opt(8, "pairs per forward")
    gguf: str | None = _opt(None, "also write a llama.cpp control vector here")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.pairs and self.behaviour != "sentiment":
            raise ValueError(f"--behaviour {self.behaviour!r} is unknown: use sentiment, or give --pairs FILE.jsonl")


def read_pairs(path: str) -> list[dict]:
    """Contrastive pairs from a JSONL (or CSV) file of {"positive": ..., "negative": ...}, through the one reader."""
    from ..core.data.readers import read_records

    rows = read_records(path)
    if not rows:
        raise ValueError(f"pairs file {path} holds no pairs: write one {{\"positive\": ..., \"negative\": ...}} "
                         "object per line")
    for i, r in enumerate(rows, 1):
        bad = [k for k in ("positive", "negative") if not isinstance(r.get(k), str) or not r[k].strip()]
        if bad:
            raise ValueError(f"pairs file {path}, record {i}: no text in {' and '.join(repr(k) for k in bad)} (it has "
                             f"{', '.join(map(repr, r)) or 'no fields'}); write {{\"positive\": ..., \"negative\": ...}}")
    return rows


def run_make(cfg: MakeConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train, save (and export) the vector; its folder becomes a run folder with a norm-by-layer plot."""
    from ..report.job import open_job
    from ..report.runs import RunDir, check_run_folder
    from .pairs import sentiment_pairs
    from .vector import SteeringVector

    with open_job(cfg, "steering-vector", model, tokenizer) as job:
        m, tok = job.model, job.tokenizer
        data = read_pairs(cfg.pairs) if cfg.pairs else sentiment_pairs(tok, cfg.n_pairs, cfg.seed)
        vec = SteeringVector.train(m, tok, data, cfg.layers, method=cfg.method, read=cfg.read,
                                   batch_size=cfg.batch_size)
    norms = vec.norms()
    if not any(v > 1e-4 for v in norms.values()):  # a real vector is ≥ 0.1; identical texts give 0 (or padding noise)
        raise ValueError(f"the steering vector is zero at every layer ({', '.join(f'L{L}' for L in norms)}): the "
                         "positive and negative texts give the same activations (identical pairs?); give pairs that "
                         "differ in the behaviour (--pairs FILE.jsonl)")
    config = {"model": cfg.model, "behaviour": None if cfg.pairs else cfg.behaviour, "pairs": cfg.pairs,
              "n_pairs": cfg.n_pairs, "seed": None if cfg.pairs else cfg.seed, "layers": vec.layers,
              "method": cfg.method, "read": cfg.read}
    check_run_folder(cfg.out, "steering-vector", config)  # before anything is written over an older vector
    folder = vec.save(cfg.out)
    summary = {"vector": str(folder), "layers": vec.layers, "norms": norms, "meta": vec.meta}
    if cfg.gguf:
        summary["gguf"] = str(vec.export_gguf(cfg.gguf))
    run = RunDir(folder, kind="steering-vector")
    run.write_config(config)
    run.write_metrics({**summary, "plots": [{"type": "bar", "title": "Steering vector norm by layer",
                                             "x_label": "layer", "y_label": "‖v‖",
                                             "labels": [f"L{L}" for L in norms], "values": list(norms.values())}]},
                      report=False)
    return summary


@dataclass
class ApplyConfig(SourceModelOptions, RunOptions):
    """Generate with and without the vector, side by side."""

    vector: str = _opt("", VECTOR_HELP, nonempty="pass --vector FOLDER (written by `steer make`)")
    prompt: list[str] = _opt(list, "user message (repeatable)", nonempty="pass --prompt TEXT (repeatable)")
    multiplier: float = _opt(1.0, "scale of the vector")
    positions: str = _opt("all", "all | prompt | generated", choices=POSITIONS)
    mode: str = _opt("add", "add | ablate | ablate_add", choices=MODES)
    layers: list[int] | None = _opt(None, "subset of the vector's layers")
    max_new_tokens: int = _opt(32, "tokens per generation")
    raw: bool = _opt(False, "use the prompt as is (no chat template)")
    out: str = _opt("runs/steer-apply", "run folder: the generations side by side, report.html")


def _vector_job(cfg: Any, kind: str, model: Any, tokenizer: Any, run_options: Any = None) -> Any:
    """The saved vector of `cfg.vector` and the job around it: its model is `cfg.model`, else the vector's own."""
    from ..report.job import open_job
    from .vector import SteeringVector

    vec = SteeringVector.load(cfg.vector)
    name = cfg.model or vec.model_id
    if model is None and not name:
        raise ValueError("which model? pass --model (the vector does not record one)")
    return vec, open_job(run_options or cfg, kind, model, tokenizer, name=name)


def run_apply(cfg: ApplyConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Greedy generations of every prompt with and without the vector; written to the run folder."""
    from dataclasses import asdict

    from .evaluate import generate
    from .pairs import chat_prompt

    vec, opened = _vector_job(cfg, "steering-apply", model, tokenizer)
    with opened as job:
        m, tok = job.model, job.tokenizer
        texts = list(cfg.prompt) if cfg.raw else [chat_prompt(tok, p) for p in cfg.prompt]
        base = generate(m, tok, texts, cfg.max_new_tokens)
        with vec.apply(m, multiplier=cfg.multiplier, positions=cfg.positions, mode=cfg.mode, layers=cfg.layers or None):
            steered = generate(m, tok, texts, cfg.max_new_tokens)
        rows = [{"prompt": p, "base": b, "steered": s} for p, b, s in zip(cfg.prompt, base, steered)]
        job.run.write_config({k: v for k, v in asdict(cfg).items() if k != "threads"})
        table = {"type": "table", "title": f"generations, multiplier {cfg.multiplier:+g}",
                 "columns": ["prompt", "base", "steered"],
                 "rows": [[r["prompt"], r["base"], r["steered"]] for r in rows]}
        job.run.write_metrics({"rows": rows, "plots": [table]}, report=False)
    return {"rows": rows}


@dataclass
class ExportConfig(Checked):
    """Write a llama.cpp control-vector GGUF (direction.N = output of block N, as probescope's layer N)."""

    vector: str = _opt("", VECTOR_HELP, nonempty="pass --vector FOLDER (written by `steer make`) and --out FILE.gguf")
    out: str = _opt("", "path of the .gguf control vector", nonempty="pass --out FILE.gguf")
    model_hint: str | None = _opt(None, "default: the model type, e.g. llama")
    multiplier: float = _opt(1.0, "baked into the file (llama.cpp also scales)")


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    """A file conversion, not a run: {"gguf": path}."""
    from .vector import SteeringVector

    path = SteeringVector.load(cfg.vector).export_gguf(cfg.out, model_hint=cfg.model_hint, multiplier=cfg.multiplier)
    return {"gguf": str(path)}


@dataclass
class VectorEvalConfig(SourceModelOptions):
    """Sweep multipliers: sentiment of generations (effect) vs KL and perplexity on neutral text (cost)."""

    vector: str = _opt("", VECTOR_HELP, nonempty="pass --vector FOLDER (written by `steer make`)")
    out: str = _opt("runs/steer-eval", "run folder: metrics.json, sweep.svg")
    sweep: EvalConfig = _opt(lambda: EvalConfig(multipliers=(-1.0, -0.5, 0.0, 0.5, 1.0), max_new_tokens=20))


def run_vector_eval(cfg: VectorEvalConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """The multiplier sweep of a saved vector, into the run folder (the sweep holds the seed and threads)."""
    from .evaluate import run_eval

    vec, opened = _vector_job(cfg, "steering-eval", model, tokenizer, run_options=cfg.sweep)
    with opened as job:
        return run_eval(vec, job.model, job.tokenizer, cfg.out, cfg.sweep)
