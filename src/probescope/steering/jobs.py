"""The steering wing's jobs, one config dataclass each (its fields are the CLI's options) and one `run_*`:
make a vector, apply it, export it, sweep its multiplier, compare it with few-shot and LoRA (on sentiment
and on an ICL task).

Light on import (no torch): the CLI reads these dataclasses to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from ..core.options import option as _opt


_THREADS = "torch threads (default: leave torch's setting)"


@dataclass
class EvalConfig:
    """A multiplier sweep: prompts to generate from, neutral texts to price the cost on."""

    multipliers: tuple[float, ...] = _opt((-8.0, -4.0, 0.0, 4.0, 8.0), "write as --multipliers=-1,0,1")
    positions: str = _opt("all", "all | prompt | generated")
    mode: str = _opt("add", "add | ablate | ablate_add")
    n_prompts: int = _opt(8, "held-out requests to generate from (effect)")
    n_neutral: int = _opt(12, "neutral texts to price the cost on (KL, perplexity)")
    max_new_tokens: int = _opt(24, "tokens per generation")
    seed: int = _opt(0, "seed of the prompts")
    samples_kept: int = _opt(3, "generations kept per multiplier on the page")


@dataclass
class CompareConfig:
    """Steering vector vs few-shot examples vs LoRA on up- or downbeat sentiment: one table."""

    model: str = _opt("smollm2-135m", "built-in name, HF folder or .gguf file")
    direction: str = _opt("up", "up (upbeat) | down (downbeat)")
    layer: int = _opt(10, "block whose output the vector edits")
    multiplier: float = _opt(1.0, "sign included: use e.g. --multiplier=-1 for down")
    n_pairs: int = _opt(32, "contrastive pairs for the vector")
    n_shots: int = _opt(4, "few-shot examples in the prompt")
    n_prompts: int = _opt(8, "held-out requests (effect)")
    n_neutral: int = _opt(8, "neutral texts (cost)")
    max_new_tokens: int = _opt(20, "tokens per generation")
    lora_steps: int = _opt(24, "LoRA training steps")
    lora_examples: int = _opt(32, "LoRA training examples")
    lora_r: int = _opt(8, "LoRA rank")
    lora_lr: float = _opt(2e-3, "LoRA learning rate")
    lora_batch: int = _opt(8, "LoRA batch size")
    seed: int = _opt(0, "seed of the data")
    out: str = _opt("runs/steer-compare", "run folder")
    threads: int | None = _opt(1, _THREADS)


@dataclass
class IclCompareConfig:
    """The pipes-vs-water table's ICL rows: on one generated ICL task, zero-shot vs an N-shot prompt vs its function
    vector vs its mean-difference task vector vs a LoRA, all learning from the same labelled examples."""

    model: str = _opt("smollm2-135m", "built-in name, HF folder or .gguf file")
    task: str = _opt("antonym", "generated ICL task: antonym, capital, past, plural, next_letter, uppercase")
    n_shots: int = _opt(5, "N: demonstrations in the prompt (and in the prompts the vectors are read from)")
    n_examples: int = _opt(16, "labelled examples every method learns from: the prompt's shots, the prompts the "
                               "vectors are read from, the LoRA's training set")
    n_queries: int = _opt(32, "held-out queries (effect: first-token accuracy), disjoint from the examples")
    n_neutral: int = _opt(8, "neutral texts (cost: KL, perplexity)")
    fv_top_k: int = _opt(10, "heads summed into the function vector")
    fv_screen: int = _opt(30, "heads measured exactly after the attribution screen (0: every head)")
    lora_steps: int = _opt(24, "LoRA training steps")
    lora_r: int = _opt(8, "LoRA rank")
    lora_lr: float = _opt(2e-3, "LoRA learning rate")
    lora_batch: int = _opt(8, "LoRA batch size")
    batch_size: int = _opt(64, "rows per forward")
    seed: int = _opt(0, "seed of the split and the shots")
    out: str = _opt("runs/steer-compare-icl", "run folder: metrics.json, table.md, report.html")
    threads: int | None = _opt(1, _THREADS)

    def __post_init__(self) -> None:
        from .icl_tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.n_shots < 1:
            raise ValueError(f"n_shots={self.n_shots}: the N-shot row needs at least one demonstration; "
                             "use --n-shots 1 or more (5 is the default)")
        if self.n_examples <= self.n_shots:
            raise ValueError(f"n_examples={self.n_examples} ≤ n_shots={self.n_shots}: each prompt draws its N shots "
                             f"from the other examples; use --n-examples {self.n_shots + 1} or more")
        if self.n_queries < 2 or self.n_neutral < 1:
            raise ValueError(f"n_queries={self.n_queries}, n_neutral={self.n_neutral}: use at least 2 held-out "
                             "queries and 1 neutral text")
        if self.lora_steps < 1:
            raise ValueError(f"lora_steps={self.lora_steps}: the LoRA row needs at least one step")


@dataclass
class MakeJob:
    """Train a steering vector from contrastive pairs and save it (the folder is the run folder)."""

    out: str = _opt("runs/steer-vector", "run folder: steering.safetensors + steering.json, report.html")
    model: str = _opt("smollm2-135m", "built-in name, HF folder or .gguf file")
    behaviour: str = _opt("sentiment", "built-in generated pairs: sentiment")
    pairs: str | None = _opt(None, 'JSONL of {"positive": ..., "negative": ...}')
    n_pairs: int = _opt(32, "generated pairs")
    layers: list[int] = _opt(lambda: [10], "comma-separated block indices")
    method: str = _opt("mean_diff", "mean_diff | pca | probe")
    read: str = _opt("last", "last (token) | span (mean over the differing tokens)")
    batch_size: int = _opt(8, "pairs per forward")
    gguf: str | None = _opt(None, "also write a llama.cpp control vector here")
    threads: int | None = _opt(None, _THREADS)


def _load(model: str | None, vector: Any = None) -> tuple[Any, Any]:
    from ..core.models.registry import load_model

    name = model or (vector.model_id if vector is not None else None)
    if not name:
        raise ValueError("which model? pass --model (the vector does not record one)")
    return load_model(name)


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


def run_make(job: MakeJob) -> dict[str, Any]:
    """Train, save (and export) the vector; its folder becomes a run folder with a norm-by-layer plot."""
    from ..core.threads import torch_threads
    from ..report.runs import RunDir
    from .pairs import sentiment_pairs
    from .vector import SteeringVector

    with torch_threads(job.threads):
        m, tok = _load(job.model)
        if job.pairs:
            data = read_pairs(job.pairs)
        elif job.behaviour == "sentiment":
            data = sentiment_pairs(tok, job.n_pairs)
        else:
            raise ValueError(f"unknown behaviour '{job.behaviour}': use sentiment, or give --pairs FILE.jsonl")
        vec = SteeringVector.train(m, tok, data, job.layers, method=job.method, read=job.read,
                                   batch_size=job.batch_size)
    norms = vec.norms()
    if not any(v > 1e-4 for v in norms.values()):  # a real vector is ≥ 0.1; identical texts give 0 (or padding noise)
        raise ValueError(f"the steering vector is zero at every layer ({', '.join(f'L{L}' for L in norms)}): the "
                         "positive and negative texts give the same activations (identical pairs?); give pairs that "
                         "differ in the behaviour (--pairs FILE.jsonl)")
    config = {"model": job.model, "behaviour": None if job.pairs else job.behaviour, "pairs": job.pairs,
              "n_pairs": job.n_pairs, "layers": vec.layers, "method": job.method, "read": job.read}
    from ..report.runs import check_run_folder

    check_run_folder(job.out, "steering-vector", config)  # before anything is written over an older vector
    folder = vec.save(job.out)
    summary = {"vector": str(folder), "layers": vec.layers, "norms": norms, "meta": vec.meta}
    if job.gguf:
        summary["gguf"] = str(vec.export_gguf(job.gguf))
    run = RunDir(folder, kind="steering-vector")
    run.write_config(config)
    run.write_metrics({**summary, "plots": [{"type": "bar", "title": "Steering vector norm by layer",
                                             "x_label": "layer", "y_label": "‖v‖",
                                             "labels": [f"L{L}" for L in norms], "values": list(norms.values())}]},
                      report=False)
    return summary


@dataclass
class ApplyJob:
    """Generate with and without the vector, side by side."""

    vector: str = _opt("", "folder written by `steer make`")
    prompt: list[str] = _opt(list, "user message (repeatable)")
    model: str | None = _opt(None, "default: the model the vector was made on")
    multiplier: float = _opt(1.0, "scale of the vector")
    positions: str = _opt("all", "all | prompt | generated")
    mode: str = _opt("add", "add | ablate | ablate_add")
    layers: list[int] | None = _opt(None, "subset of the vector's layers")
    max_new_tokens: int = _opt(32, "tokens per generation")
    raw: bool = _opt(False, "use the prompt as is (no chat template)")
    threads: int | None = _opt(None, _THREADS)
    out: str = _opt("runs/steer-apply", "run folder: the generations side by side, report.html")


def _vector_and_model(vector: str, model: str | None) -> tuple[Any, Any, Any]:
    from .vector import SteeringVector

    if not vector:
        raise ValueError("no vector given: pass --vector FOLDER (written by `steer make`)")
    vec = SteeringVector.load(vector)
    return (vec, *_load(model, vec))


def run_apply(job: ApplyJob) -> dict[str, Any]:
    """Greedy generations of every prompt with and without the vector; written to the run folder."""
    from ..core.threads import torch_threads
    from ..report.runs import RunDir
    from .evaluate import generate
    from .pairs import chat_prompt

    if not job.prompt:
        raise ValueError("no prompt given: pass --prompt TEXT (repeatable)")
    with torch_threads(job.threads):
        vec, m, tok = _vector_and_model(job.vector, job.model)
        texts = list(job.prompt) if job.raw else [chat_prompt(tok, p) for p in job.prompt]
        base = generate(m, tok, texts, job.max_new_tokens)
        with vec.apply(m, multiplier=job.multiplier, positions=job.positions, mode=job.mode, layers=job.layers or None):
            steered = generate(m, tok, texts, job.max_new_tokens)
    rows = [{"prompt": p, "base": b, "steered": s} for p, b, s in zip(job.prompt, base, steered)]
    run = RunDir(job.out, kind="steering-apply")
    run.write_config({k: v for k, v in vars(job).items() if k != "threads"})
    run.write_metrics({"rows": rows, "plots": [{"type": "table", "title": f"generations, multiplier {job.multiplier:+g}",
                                                "columns": ["prompt", "base", "steered"],
                                                "rows": [[r["prompt"], r["base"], r["steered"]] for r in rows]}]},
                      report=False)
    return {"rows": rows}


@dataclass
class ExportJob:
    """Write a llama.cpp control-vector GGUF (direction.N = output of block N, as probescope's layer N)."""

    vector: str = _opt("", "folder written by `steer make`")
    out: str = _opt("", "path of the .gguf control vector")
    model_hint: str | None = _opt(None, "default: the model type, e.g. llama")
    multiplier: float = _opt(1.0, "baked into the file (llama.cpp also scales)")


def run_export(job: ExportJob) -> dict[str, Any]:
    """A file conversion, not a run: {"gguf": path}."""
    from .vector import SteeringVector

    if not job.vector or not job.out:
        raise ValueError("pass --vector FOLDER and --out FILE.gguf")
    path = SteeringVector.load(job.vector).export_gguf(job.out, model_hint=job.model_hint, multiplier=job.multiplier)
    return {"gguf": str(path)}


@dataclass
class VectorEvalJob:
    """Sweep multipliers: sentiment of generations (effect) vs KL and perplexity on neutral text (cost)."""

    vector: str = _opt("", "folder written by `steer make`")
    out: str = _opt("runs/steer-eval", "run folder: metrics.json, sweep.svg")
    model: str | None = _opt(None, "default: the model the vector was made on")
    sweep: EvalConfig = _opt(lambda: EvalConfig(multipliers=(-1.0, -0.5, 0.0, 0.5, 1.0), max_new_tokens=20))
    threads: int | None = _opt(None, _THREADS)


def run_vector_eval(job: VectorEvalJob) -> dict[str, Any]:
    """The multiplier sweep of a saved vector, into the run folder."""
    from ..core.threads import torch_threads
    from .evaluate import run_eval

    with torch_threads(job.threads):
        vec, m, tok = _vector_and_model(job.vector, job.model)
        return run_eval(vec, m, tok, job.out, job.sweep)
