"""`probescope steer make | apply | export | eval | compare | compare-icl | icl`: the options are the job dataclasses' fields
(`steering/jobs.py`, `steering/icl_run.py`); each command calls one `run_*` of the wing and prints its lines."""

from __future__ import annotations


import typer
from rich.console import Console

from ..clikit import config_command, lazy
from .jobs import ApplyConfig, CompareConfig, ExportConfig, IclCompareConfig, MakeConfig, VectorEvalConfig

app = typer.Typer(help="Steering vectors: make, apply, export (llama.cpp GGUF), evaluate, compare.",
                  no_args_is_help=True)
console = Console(stderr=True)


def _show_make(s: dict, cfg: object = None) -> None:
    """One line: the behaviour (or pairs file) asked for, the layers, how many pairs, where the vector is."""
    what = (f"the pairs in {cfg.pairs}" if getattr(cfg, "pairs", None) else getattr(cfg, "behaviour", None)) or \
        "its pairs"
    console.print(f"[green]vector[/green] for {what} at layers {s['layers']}, from {s['meta']['n_pairs']} pairs in "
                  f"{s['meta']['train_seconds']:.1f} s: {s['vector']}", soft_wrap=True)


def _show_apply(res: dict) -> None:
    for r in res["rows"]:
        console.print(f"[bold]{r['prompt']}[/bold]\n  [dim]base:[/dim]    {r['base']}\n  [green]steered:[/green] {r['steered']}")


def _show_export(res: dict) -> None:
    console.print(f"[green]gguf[/green] {res['gguf']}  (llama-cli --control-vector-scaled {res['gguf']} 1.0)")


def _show_eval(m: dict) -> None:
    """Per multiplier: the effect on generations and the cost on neutral text; then one sentence: which vector, on
    which behaviour, how far the sweep moved it and at what cost."""
    s, mults = m["series"], m["multipliers"]
    for i, mult in enumerate(mults):
        console.print(f"  ×{mult:+.2f}: sentiment {s['sentiment'][i]:+.2f}, positive {s['positive_rate'][i]:.2f}, "
                      f"KL {s['kl'][i]:.3f} nats/token, perplexity {s['ppl'][i]:.1f}")
    lo, hi = mults.index(min(mults)), mults.index(max(mults))
    moved = s["sentiment"][hi] - s["sentiment"][lo]
    verdict = "no measurable effect on the generations" if abs(moved) < 0.05 else \
        f"sentiment {s['sentiment'][lo]:+.2f} at ×{mults[lo]:g} and {s['sentiment'][hi]:+.2f} at ×{mults[hi]:g}"
    console.print(f"The {m.get('method', '')} vector at layers {m.get('layers')} swept over ×{mults[lo]:g}…×{mults[hi]:g} "
                  f"on {m.get('behaviour', 'its behaviour')}: {verdict}; its cost on neutral text is at most KL "
                  f"{max(s['kl']):.3f} nats/token, perplexity {min(s['ppl']):.1f}–{max(s['ppl']):.1f} "
                  f"(unsteered {m['base_ppl']:.1f}).", soft_wrap=True)


def _show_compare(m: dict) -> None:
    """The table, then one sentence: what was compared on which behaviour, which method moved it most and at what
    cost on neutral text."""
    from .compare import table_markdown

    print(table_markdown(m["rows"]))
    rows, cfg = m["rows"], m.get("config", {})
    base = rows.get("baseline", {}).get("sentiment", 0.0)
    moved = {k: r["sentiment"] - base for k, r in rows.items() if k != "baseline" and r.get("sentiment") is not None}
    asked = (f"Steering (layer {cfg.get('layer')}, ×{cfg.get('multiplier', 1):g}) vs few-shot vs LoRA on "
             f"{m.get('behaviour', 'the behaviour')} on {cfg.get('model', 'the model')}")
    if not moved or max(abs(v) for v in moved.values()) < 0.05:
        console.print(f"{asked}: no method moved the sentiment of the generations measurably (|Δ| < 0.05).",
                      soft_wrap=True)
        return
    best = max(moved, key=lambda k: moved[k] if cfg.get("direction", "up") == "up" else -moved[k])
    console.print(f"{asked}: {best} moves sentiment most, {moved[best]:+.2f} over the baseline, at KL "
                  f"{rows[best].get('kl', float('nan')):.3f} nats/token on neutral text.", soft_wrap=True)


config_command(app, "make", MakeConfig, lazy(f"{__package__}.jobs", "run_make"), show=_show_make, run_dir=lambda j, r: r["vector"],
               kind="steering-vector")
config_command(app, "apply", ApplyConfig, lazy(f"{__package__}.jobs", "run_apply"), show=_show_apply, kind="steering-apply")
config_command(app, "export", ExportConfig, lazy(f"{__package__}.jobs", "run_export"), show=_show_export, run_dir=lambda j, r: None)
config_command(app, "eval", VectorEvalConfig, lazy(f"{__package__}.jobs", "run_vector_eval"), show=_show_eval,
               run_dir=lambda j, r: r["run_dir"], kind="steering-eval")
config_command(app, "compare", CompareConfig, lazy(f"{__package__}.compare", "run_comparison"), show=_show_compare,
               run_dir=lambda j, r: r["run_dir"], kind="steering-compare")


def _show_compare_icl(m: dict) -> None:
    from .compare_icl import table_markdown

    console.print(f"[bold]{m['task']}[/bold] on {m['model']}: {m['effect']}")
    print(table_markdown(m["rows"], m["n_shots"]))


config_command(app, "compare-icl", IclCompareConfig, lazy(f"{__package__}.compare_icl", "run_icl_comparison"),
               show=_show_compare_icl, run_dir=lambda j, r: r["run_dir"], kind="steering-compare-icl")


def _num(x, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _show_icl(res: dict) -> None:
    """`steer icl` in the user's words: the tasks the model learns from examples (and the function/task vectors' share
    of that gain, as a table), the belief model's held-out fit, the exchange rate with its interval, and the check of
    the rate by running the shots it predicts."""
    from rich.table import Table

    tasks = res.get("tasks") or {}
    if tasks:
        t = Table("task", "0-shot", "N-shot", "function vector (recovered)", "task vector (recovered)", "note",
                  title="Tasks learnt from examples (first-token accuracy)")
        for name, r in tasks.items():
            n_shot = next((v for k, v in r.items() if k.startswith("acc_") and k.endswith("shot") and k != "acc_0shot"),
                          None)
            fv = f"{_num(r.get('acc_fv'))} ({_num(r.get('recovery_fv'), '.0%')})" if "acc_fv" in r else ""
            tv = f"{_num(r.get('acc_tv'))} ({_num(r.get('recovery_tv'), '.0%')})" if "acc_tv" in r else ""
            t.add_row(name, _num(r.get("acc_0shot")), _num(n_shot), fv, tv, r.get("skipped", ""))
        console.print(t)
    if "grid" not in res:
        return
    console.print(f"[bold]{res['task']} vs {res['contrast']}[/bold] on {res['model']}: vector at layer "
                  f"{res.get('vector', {}).get('layer')}")
    if res.get("fits") is None:
        console.print(res.get("effect", {}).get("error", "no fit"))
        return
    for form, f in res["fits"].items():
        console.print(f"  {form:9s} fit on half the cells, scored on the other half: r {_num(f['heldout_r'], '.3f')}, "
                      f"R² {_num(f['heldout_r2'], '.3f')}; flip point predicted within {_num(f['flip_error_mean'])} "
                      "shots on average")
    ci = res["bootstrap"]["shots_per_strength"]["ci95"]
    one = res["conversion"]["shots_for_strength"].get(1.0)
    lo, hi = (ci if ci and len(ci) == 2 else (None, None))
    console.print(f"  exchange rate: steering strength 1 ≈ {_num(one)} shots (95% interval {_num(lo)}–{_num(hi)})")
    for row in res.get("vector_to_icl") or []:
        if "shots_run" in row:
            console.print(f"  check: strength {row['strength']:g} predicted ≈ {_num(row['predicted_shots'])} shots; "
                          f"running {row['shots_run']} shots gives log-odds {_num(row['shots_log_odds'])} vs the "
                          f"vector's {_num(row['vector_log_odds'])} (gap {_num(row['gap'], '+.2f')})")
        elif row.get("note"):
            console.print(f"  check: strength {row['strength']:g}: {row['note']}")


from .icl_run import IclConfig as _IclConfig, run_icl as _run_icl  # noqa: E402

config_command(app, "icl", _IclConfig, _run_icl, show=_show_icl)
