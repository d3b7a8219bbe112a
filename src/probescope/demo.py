"""`make demo`: load the default model, capture a few built-in prompts, and show what the layers hold."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from .core.capture import capture
from .core.hooks import find_blocks
from .core.models.registry import load_model
from .report.runs import RunDir

PROMPTS = [
    "The capital city of France is",
    "Seven times four equals",
    "def add(a, b):\n    return",
    "The opposite of hot is",
]


@torch.no_grad()
def run_demo(model: str = "smollm2-135m", out: str = "runs/demo", quiet: bool = False) -> dict:
    """Early exit of chain-of-thought with the reasoner and its shipped probe (when both are installed);
    otherwise capture every 5th layer for the built-in prompts and print the logit-lens guess of each layer."""
    from .exit.demo import MODEL, REASONERS, run_exit_demo, shipped_available

    reasoner = model if model in REASONERS else MODEL if model == "smollm2-135m" else None
    if reasoner is not None and shipped_available(reasoner):
        return run_exit_demo(reasoner, out, quiet)
    console = Console(quiet=quiet)
    t0 = time.perf_counter()
    mdl, tok = load_model(model)
    load_s = time.perf_counter() - t0
    blocks = find_blocks(mdl)
    n = blocks.n_layers
    layers = sorted(set(list(range(0, n, 5)) + [n - 1]))
    t1 = time.perf_counter()
    cap = capture(mdl, PROMPTS, layers, tokenizer=tok, positions="last", final_norm=True)
    cap_s = time.perf_counter() - t1
    head = mdl.get_output_embeddings()
    table = Table(title=f"{model}: next-token guess read from each layer (logit lens, last token)")
    table.add_column("prompt")
    for layer in layers:
        table.add_column(f"L{layer}")
    rows = []
    for p_i, prompt in enumerate(PROMPTS):
        guesses = []
        for layer in layers:
            x = cap.acts[layer][p_i]
            if layer != n - 1 and blocks.final_norm is not None:
                x = blocks.final_norm(x)
            guesses.append(tok.decode([int(head(x).argmax())]).strip() or repr(tok.decode([int(head(x).argmax())])))
        rows.append({"prompt": prompt, "guesses": dict(zip(map(str, layers), guesses)),
                     "norms": {str(l): float(cap.acts[l][p_i].norm()) for l in layers}})
        table.add_row(prompt.replace("\n", "⏎"), *guesses)
    console.print(table)
    metrics = {"model": model, "layers": layers, "n_layers": n, "d_model": int(cap.acts[layers[0]].shape[-1]),
               "load_s": load_s, "capture_s": cap_s, "prompts": rows}
    run = RunDir(out, kind="demo")
    run.write_config({"model": model, "layers": layers, "prompts": PROMPTS})
    run.write_metrics(metrics)
    page = run.path / "report.html"
    console.print(f"loaded in {load_s:.1f} s, captured {len(layers)} layers × {len(PROMPTS)} prompts in {cap_s:.2f} s; "
                  f"report: {page}")
    return metrics
