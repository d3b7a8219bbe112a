"""`probescope steer make | apply | export | eval | compare`: thin over the Python API (heavy imports inside)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from ..clikit import JSON, QUIET, config_command, finish, job_output, parse_floats as _floats, parse_layers, run_job as _run
from ..core.threads import torch_threads

app = typer.Typer(help="Steering vectors: make, apply, export (llama.cpp GGUF), evaluate, compare.",
                  no_args_is_help=True)
console = Console(stderr=True)


def _check_out(out: str, kind: str, overwrite: bool) -> None:
    """Refuse an --out holding another kind of run before any work (the rule every job follows)."""
    from ..report.runs import allow_overwrite_at, check_out

    if overwrite:
        allow_overwrite_at(out)

    check_out(out, kind, overwrite)


def _load(model: Optional[str], vector=None):
    from ..core.models.registry import load_model

    name = model or (vector.model_id if vector is not None else None)
    if not name:
        raise ValueError("which model? pass --model (the vector does not record one)")
    return load_model(name)


def _vector_and_model(vector: str, model: Optional[str], threads: Optional[int]):
    """(vector, model, tokenizer) for the commands that use a saved vector."""
    from .vector import SteeringVector

    vec = SteeringVector.load(vector)
    return (vec, *_load(model, vec))


@app.command("make")
def make_cmd(
    out: str = typer.Option("runs/steer-vector", "--out", help="run folder: steering.safetensors + steering.json, report.html"),
    model: str = typer.Option("smollm2-135m", "--model"),
    behaviour: str = typer.Option("sentiment", "--behaviour", help="built-in generated pairs: sentiment"),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="JSONL of {\"positive\": ..., \"negative\": ...}"),
    n_pairs: int = typer.Option(32, "--n-pairs"),
    layers: str = typer.Option("10", "--layers", help="comma-separated block indices"),
    method: str = typer.Option("mean_diff", "--method", help="mean_diff | pca | probe"),
    read: str = typer.Option("last", "--read", help="last (token) | span (mean over the differing tokens)"),
    batch_size: int = typer.Option(8, "--batch-size"),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="also write a llama.cpp control vector here"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Train a steering vector from contrastive pairs and save it (the folder is the run folder)."""
    def job():
        _check_out(out, "steering-vector", overwrite)
        from .pairs import sentiment_pairs
        from .vector import SteeringVector

        m, tok = _load(model)
        if pairs:
            from pathlib import Path

            path = Path(pairs)
            if not path.is_file():
                raise FileNotFoundError(f"pairs file {path} does not exist")
            data = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif behaviour == "sentiment":
            data = sentiment_pairs(tok, n_pairs)
        else:
            raise ValueError(f"unknown behaviour '{behaviour}': use sentiment, or give --pairs FILE.jsonl")
        vec = SteeringVector.train(m, tok, data, parse_layers(layers), method=method, read=read, batch_size=batch_size)
        folder = vec.save(out)
        summary = {"vector": str(folder), "layers": vec.layers, "norms": vec.norms(), "meta": vec.meta}
        if gguf:
            summary["gguf"] = str(vec.export_gguf(gguf))
        from ..report.runs import RunDir

        run = RunDir(folder, kind="steering-vector")
        run.write_config({"model": model, "behaviour": None if pairs else behaviour, "pairs": pairs, "n_pairs": n_pairs,
                          "layers": vec.layers, "method": method, "read": read})
        norms = vec.norms()
        run.write_metrics({**summary, "plots": [{"type": "bar", "title": "Steering vector norm by layer",
                                                 "x_label": "layer", "y_label": "‖v‖",
                                                 "labels": [f"L{L}" for L in norms], "values": list(norms.values())}]},
                          report=False)
        return summary

    with job_output(quiet, json_out), torch_threads(threads):
        summary = _run(job)
    finish(summary["vector"], summary, quiet, json_out, show=lambda: console.print(
        f"[green]vector[/green] {summary['vector']}: layers {summary['layers']}, "
        f"{summary['meta']['n_pairs']} pairs, {summary['meta']['train_seconds']:.1f} s"))


@app.command("apply")
def apply_cmd(
    vector: str = typer.Option(..., "--vector", help="folder written by `steer make`"),
    prompt: list[str] = typer.Option(..., "--prompt", help="user message (repeatable)"),
    model: Optional[str] = typer.Option(None, "--model", help="default: the model the vector was made on"),
    multiplier: float = typer.Option(1.0, "--multiplier"),
    positions: str = typer.Option("all", "--positions", help="all | prompt | generated"),
    mode: str = typer.Option("add", "--mode", help="add | ablate | ablate_add"),
    layers: Optional[str] = typer.Option(None, "--layers", help="subset of the vector's layers"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    raw: bool = typer.Option(False, "--raw", help="use the prompt as is (no chat template)"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    out: str = typer.Option("runs/steer-apply", "--out", help="run folder: the generations side by side, report.html"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Generate with and without the vector, side by side."""
    def job():
        _check_out(out, "steering-apply", overwrite)
        from .evaluate import generate
        from .pairs import chat_prompt

        vec, m, tok = _vector_and_model(vector, model, threads)
        texts = list(prompt) if raw else [chat_prompt(tok, p) for p in prompt]
        base = generate(m, tok, texts, max_new_tokens)
        with vec.apply(m, multiplier=multiplier, positions=positions, mode=mode,
                       layers=parse_layers(layers) if layers else None):
            steered = generate(m, tok, texts, max_new_tokens)
        return [{"prompt": p, "base": b, "steered": s} for p, b, s in zip(prompt, base, steered)]

    with job_output(quiet, json_out), torch_threads(threads):
        rows = _run(job)
    from ..report.runs import RunDir

    run = RunDir(out, kind="steering-apply")
    run.write_config({"vector": vector, "model": model, "multiplier": multiplier, "positions": positions, "mode": mode,
                      "layers": layers, "max_new_tokens": max_new_tokens, "raw": raw})
    run.write_metrics({"rows": rows, "plots": [{"type": "table", "title": f"generations, multiplier {multiplier:+g}",
                                                "columns": ["prompt", "base", "steered"],
                                                "rows": [[r["prompt"], r["base"], r["steered"]] for r in rows]}]},
                      report=False)

    def show() -> None:
        for r in rows:
            console.print(f"[bold]{r['prompt']}[/bold]\n  [dim]base:[/dim]    {r['base']}\n  [green]steered:[/green] {r['steered']}")

    finish(out, {"rows": rows}, quiet, json_out, show)


@app.command("export")
def export_cmd(
    vector: str = typer.Option(..., "--vector"),
    out: str = typer.Option(..., "--out", help="path of the .gguf control vector"),
    model_hint: Optional[str] = typer.Option(None, "--model-hint", help="default: the model type, e.g. llama"),
    multiplier: float = typer.Option(1.0, "--multiplier", help="baked into the file (llama.cpp also scales)"),
    json_out: bool = JSON,
) -> None:
    """Write a llama.cpp control-vector GGUF (direction.N = output of block N, as probescope's layer N)."""

    def job():
        from .vector import SteeringVector

        return SteeringVector.load(vector).export_gguf(out, model_hint=model_hint, multiplier=multiplier)

    path = _run(job)  # a file conversion, not a job: no run folder
    finish(None, {"gguf": str(path)}, False, json_out,
           show=lambda: console.print(f"[green]gguf[/green] {path}  (llama-cli --control-vector-scaled {path} 1.0)"))


@app.command("eval")
def eval_cmd(
    vector: str = typer.Option(..., "--vector"),
    out: str = typer.Option("runs/steer-eval", "--out", help="run folder: metrics.json, sweep.svg"),
    model: Optional[str] = typer.Option(None, "--model"),
    multipliers: str = typer.Option("-1,-0.5,0,0.5,1", "--multipliers", help="write as --multipliers=-1,0,1"),
    positions: str = typer.Option("all", "--positions"),
    mode: str = typer.Option("add", "--mode"),
    n_prompts: int = typer.Option(8, "--n-prompts"),
    n_neutral: int = typer.Option(12, "--n-neutral"),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Sweep multipliers: sentiment of generations (effect) vs KL and perplexity on neutral text (cost)."""

    def job():
        _check_out(out, "steering-eval", overwrite)
        from .evaluate import EvalConfig, run_eval

        vec, m, tok = _vector_and_model(vector, model, threads)
        cfg = EvalConfig(multipliers=tuple(_floats(multipliers)), positions=positions, mode=mode,
                         n_prompts=n_prompts, n_neutral=n_neutral, max_new_tokens=max_new_tokens)
        return run_eval(vec, m, tok, out, cfg)

    with job_output(quiet, json_out), torch_threads(threads):
        metrics = _run(job)

    def show() -> None:
        s = metrics["series"]
        for i, mult in enumerate(metrics["multipliers"]):
            console.print(f"  x{mult:+.2f}: sentiment {s['sentiment'][i]:+.2f}  positive {s['positive_rate'][i]:.2f}  "
                          f"KL {s['kl'][i]:.4f}  ppl {s['ppl'][i]:.2f}")

    finish(metrics["run_dir"], {k: metrics[k] for k in ("multipliers", "series")}, quiet, json_out, show)


@app.command("compare")
def compare_cmd(
    out: str = typer.Option("runs/steer-compare", "--out"),
    model: str = typer.Option("smollm2-135m", "--model"),
    direction: str = typer.Option("up", "--direction", help="up (upbeat) | down (downbeat)"),
    layer: int = typer.Option(10, "--layer"),
    multiplier: float = typer.Option(1.0, "--multiplier", help="sign included: use e.g. --multiplier=-1 for down"),
    lora_steps: int = typer.Option(24, "--lora-steps"),
    threads: Optional[int] = typer.Option(1, "--threads"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run of another kind already at --out"),
    quiet: bool = QUIET, json_out: bool = JSON,
) -> None:
    """Steering vector vs few-shot examples vs LoRA on up- or downbeat sentiment: one table."""

    def job():
        _check_out(out, "steering-compare", overwrite)
        from .compare import CompareConfig, run_comparison

        return run_comparison(CompareConfig(model=model, direction=direction, layer=layer, multiplier=multiplier, lora_steps=lora_steps,
                                            out=out, threads=threads))

    with job_output(quiet, json_out):
        metrics = _run(job)
    from .compare import table_markdown

    finish(metrics["run_dir"], {"rows": metrics["rows"]}, quiet, json_out, show=lambda: print(table_markdown(metrics["rows"])))


def _show_icl(res: dict) -> None:
    """Summary lines of `steer icl`."""
    console.print(f"[bold]{res['task']} vs {res['contrast']}[/bold] on {res['model']}: vector at layer "
                  f"{res.get('vector', {}).get('layer')}")
    if res.get("fits") is None:
        console.print(res.get("effect", {}).get("error", "no fit"))
        return
    for form, f in res["fits"].items():
        console.print(f"  {form:9s} held-out r={f['heldout_r']:.3f} R²={f['heldout_r2']:.3f} "
                      f"flip error={f['flip_error_mean']} shots")
    ci = res["bootstrap"]["shots_per_strength"]["ci95"]
    console.print(f"  strength 1 ≡ {res['conversion']['shots_for_strength'].get(1.0)} shots (95% CI {ci})")


from .icl_run import IclConfig as _IclConfig, run_icl as _run_icl  # noqa: E402

config_command(app, "icl", _IclConfig, _run_icl, show=_show_icl)
