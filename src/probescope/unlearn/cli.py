"""`probescope unlearn [run]` and `probescope unlearn audit RUN`: thin over probescope.unlearn."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from ..clikit import JSON, QUIET, finish, job_output

app = typer.Typer(help="Unlearning (RMU, rmu-adv, gradient ascent, NPO) and the attacks that show whether the model "
                       "really forgot.", invoke_without_command=True)
console = Console(stderr=True)


def _fail(fn):
    try:
        return fn()
    except (ValueError, FileNotFoundError, ModuleNotFoundError, TypeError, KeyError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text in (None, ""):
        return None
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, e.g. 5,6,7; got {text!r}") from None


def run_cmd(
    ctx: typer.Context,
    model: str = typer.Option("smollm2-135m", "--model"),
    forget: str = typer.Option("capitals", "--forget", help="'capitals' or a JSONL/CSV of texts and prompt/answer rows"),
    retain: str = typer.Option("default", "--retain", help="'default' or a JSONL/CSV/TXT of texts to keep"),
    retain_eval: str = typer.Option("antonyms", "--retain-eval", help="'antonyms', 'none' or a JSONL/CSV of prompt/answer rows"),
    method: str = typer.Option("rmu", "--method", help="rmu | rmu-adv | ga | npo"),
    layer: int = typer.Option(None, "--layer", help="ℓ: RMU's loss on resid_post.ℓ (default: a quarter of the depth)"),
    update_layers: str = typer.Option(None, "--update-layers", help="blocks whose MLPs are trained, e.g. 5,6,7 (default ℓ-2..ℓ)"),
    steering_scale: float = typer.Option(2.0, "--steering-scale", help="c = this × the layer's median token norm"),
    alpha: float = typer.Option(100.0, "--alpha", help="RMU retain weight"),
    alpha_lm: float = typer.Option(1.0, "--alpha-lm", help="ga/npo retain LM-loss weight"),
    beta: float = typer.Option(0.1, "--beta", help="NPO inverse temperature"),
    adv_weight: float = typer.Option(1.0, "--adv-weight", help="rmu-adv: weight of the in-the-loop ablation term"),
    lr: float = typer.Option(None, "--lr", help="default: the method's (rmu 1e-3, ga/npo 1e-4)"),
    steps: int = typer.Option(150, "--steps"),
    batch_size: int = typer.Option(4, "--batch-size"),
    n_facts: int = typer.Option(60, "--n-facts", help="capitals: countries considered"),
    n_eval: int = typer.Option(20, "--n-eval", help="forget facts held out of training and scored"),
    known_only: bool = typer.Option(True, "--known-only/--all-facts", help="keep only facts the model answers before"),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(25, "--checkpoint-every"),
    threads: int = typer.Option(0, "--threads"),
    device: str = typer.Option("cpu", "--device"),
    out: str = typer.Option("runs/unlearn", "--out", help="run folder (resumed if it holds a checkpoint)"),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Unlearn a topic (default: country capitals on SmolLM2-135M) and score forget/retain/utility before and after."""
    if ctx.invoked_subcommand is not None:
        return
    from .runner import UnlearnRun
    from .runner import run_unlearn
    from .train import UnlearnConfig

    def run() -> Any:
        ucfg = UnlearnConfig(method=method, layer=layer, update_layers=_ints(update_layers, "--update-layers"),
                             steering_scale=steering_scale, alpha=alpha, alpha_lm=alpha_lm, beta=beta,
                             adv_weight=adv_weight, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                             checkpoint_every=checkpoint_every, threads=threads or None, device=device)
        cfg = UnlearnRun(model=model, forget=forget, retain=retain, retain_eval=retain_eval, n_facts=n_facts,
                         n_eval=n_eval, known_only=known_only, out=out, seed=seed, unlearn=ucfg)
        return run_unlearn(cfg, quiet=quiet or json_out, resume=resume)

    with job_output(quiet, json_out):
        m = _fail(run)
    res = {k: v for k, v in m.items() if k != "plots"}
    finish(out, res, quiet, json_out, show=lambda: _show(m))


def _show(m: dict) -> None:
    b, a = m["before"], m["after"]
    console.print(f"[green]unlearn[/green] {m['method']} at {m['site']}: forget {b['forget']['acc']:.2f} → "
                  f"{a['forget']['acc']:.2f} (chance {a['forget']['chance']:.2f})"
                  + (f", retain {b['retain']['acc']:.2f} → {a['retain']['acc']:.2f}" if "retain" in a else "")
                  + (f", perplexity {b['utility']['ppl']:.1f} → {a['utility']['ppl']:.1f}" if "utility" in a else ""))


app.callback(invoke_without_command=True)(run_cmd)
app.command("run")(run_cmd)


@app.command("audit")
def audit_cmd(
    run: str = typer.Argument(..., help="a finished `probescope unlearn` run folder"),
    attacks: str = typer.Option("relearn,probe,direction", "--attacks", help="any of relearn, probe, direction"),
    steps: str = typer.Option("5,20,100", "--steps", help="relearning: LoRA steps scored"),
    relearn_lr: float = typer.Option(1e-4, "--relearn-lr"),
    spans: str = typer.Option("1,4", "--spans", help="direction removal at ℓ+1..ℓ+k for each k"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads"),
    device: str = typer.Option("cpu", "--device"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Relearning, per-layer probes and direction removal on RUN, each reported as "knowledge recovered"."""
    from .runner import AuditConfig, run_audit

    def go() -> Any:
        cfg = AuditConfig(run=run, attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()),
                          steps=_ints(steps, "--steps") or (5, 20, 100), relearn_lr=relearn_lr,
                          spans=_ints(spans, "--spans") or (1,), seed=seed, threads=threads or None, device=device)
        return run_audit(cfg, quiet=quiet or json_out)

    with job_output(quiet, json_out):
        res = _fail(go)
    res.pop("_control", None)
    from .runner import audit_summary

    summary = audit_summary(res)
    finish(run, {"audit": summary, "site": res["site"], "method": res["method"]}, quiet, json_out,
           show=lambda: [console.print(f"{k}: recovered {v['recovered']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]")
                         if isinstance(v, dict) else console.print(f"{k}: {v:.2f}") for k, v in summary.items()])
