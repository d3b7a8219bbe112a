"""`probescope exit ...`: collect, train, calibrate, eval, run (live).

Each command is its config dataclass (`clikit.config_command`: the fields are the options) and calls one `run_*`
function of the wing; this file only prints the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..clikit import config_command
from .calibrate import CalibrateConfig, run_calibrate
from .collect import CollectConfig, run_collect
from .evaluate import EvalConfig, run_eval
from .live import RunConfig, run_live
from .selftrain import SelfTrainConfig, run_selftrain, show_selftrain
from .train import TrainConfig, run_train

app = typer.Typer(help="Early exit of chain-of-thought: stop reasoning once a probe is sure of the final answer.",
                  no_args_is_help=True)
console = Console(stderr=True)


def _show_collect(m: dict) -> None:
    from ..core.stats import wilson

    def acc(v: dict) -> str:
        lo, hi = wilson(round(v["accuracy"] * v["n"]), v["n"])
        return f"accuracy {v['accuracy']:.0%} [{lo:.0%}, {hi:.0%}]" if v["n"] else "no problems"

    console.print(f"[green]collected[/green] {m['model']}'s reasoning: " + ", ".join(
        f"{k} {v['n']} problems ({acc(v)}, {v['mean_reasoning_tokens']:.0f} tokens of reasoning on average)"
        for k, v in m["splits"].items()))
    if m.get("problems"):  # where the problems came from and how many went to each split (counts are counts)
        console.print(f"  problems {m['problems']}", markup=False, emoji=False, highlight=False)


def _show_train(info: dict) -> None:
    s = info["scores"][str(info["chosen"])]
    others = ", ".join(f"{k} {v['val_nll']:.2f}" for k, v in sorted(info["scores"].items(), key=lambda kv: int(kv[0]))
                       if int(k) != info["chosen"])
    console.print(f"[green]exit probe[/green] reads layer {info['chosen']}: on the val problems' reasoning prefixes it "
                  f"names the model's final answer {s['val_acc']:.0%} of the time (loss {s['val_nll']:.2f}; "
                  f"{s['val_checkpoints']} checkpoints)" + (f"; other layers' loss: {others}" if others else "")
                  + ". Next: `probescope exit calibrate` for its τ.", markup=False, highlight=False)


def _show_calibrate(d: dict) -> None:
    target = 1 - d["alpha"]
    if d.get("tau") is None:
        console.print(f"[yellow]no τ[/yellow] certifies agreement ≥ {target:.3g} with the full answer by the "
                      f"{d['rule']} rule on these val problems: exit never fires at this target"
                      + (f"; {d['note']}" if d.get("note") else ""), highlight=False)
    else:
        console.print(f"[green]τ = {d['tau']:.4f}[/green] ({d['rule']} rule, target agreement ≥ {target:.3g}): on the "
                      f"val problems, exiting there agrees with the full answer {d['val_agreement']:.1%} of the time "
                      f"and saves {d['val_tokens_saved']:.1%} of reasoning tokens"
                      + (f"; {d['note']}" if d.get("note") else ""), highlight=False)
    say = (lambda text: console.print(text, markup=False, emoji=False, highlight=False, soft_wrap=True))
    if d.get("mix_text"):  # the calibration problems per family group, then each group's agreement and guarantee
        say(f"  calibrated on {d['mix_text']}")
    for name, g in (d.get("groups") or {}).items():
        say(f"  {name}: {g['n']} problems, agreement {g['agreement']:.1%}, tokens saved {g['tokens_saved']:.1%}; "
            f"{g['guarantee']}")
    r = d.get("confidence_range")
    if r:
        say(f"  drift check: live decoding warns when the median probe confidence at its checks leaves "
            f"[{r['lo']:.3f}, {r['hi']:.3f}] (5th-95th percentile of {r['n_checks']} calibration checks)")


def _probe_folder(cfg: CalibrateConfig, _res: Any) -> str | None:
    """The probe's folder is its run folder: its page shows the calibration next to the layer choice."""
    return cfg.probe if Path(cfg.probe).is_dir() else None


def print_table(m: dict, con: Console) -> None:
    from rich.table import Table

    p = m["methods"].get("probe")
    if p is not None:  # the answer first, in words
        lo, hi = p.get("agreement_ci95") or (None, None)
        ci = f" [{lo:.1%}, {hi:.1%}]" if lo is not None else ""
        con.print(f"On {m['n_test']} test problems the probe at its calibrated τ saves {p['tokens_saved']:.1%} of "
                  f"reasoning tokens, agreeing with the full answer {p['agreement']:.1%}{ci} of the time (accuracy "
                  f"{p['accuracy']:.1%}); the oracle would save {m['methods'].get('oracle', {}).get('tokens_saved', 0):.1%}.",
                  markup=False, emoji=False, highlight=False, soft_wrap=True)
    t = Table(title=f"{m['model']}: early exit at the calibrated τ ({m['n_test']} test problems)")
    for c in ("method", "tokens saved", "wall-clock saved", "agreement [95% CI]", "accuracy", "probe overhead",
              "share of the oracle"):
        t.add_column(c)
    for name, r in m["methods"].items():
        f = (lambda v: "—" if v is None else f"{v:.1%}")
        ci = r.get("agreement_ci95")
        t.add_row(name.replace("_", " "), f(r["tokens_saved"]),
                  f(r["wallclock_saved"]) + (" (est.)" if r.get("wallclock_estimated") and r["wallclock_saved"] is not None
                                             else ""),
                  f(r["agreement"]) + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""), f(r["accuracy"]),
                  f(r["probe_overhead"]), f(r["oracle_fraction"]))
    con.print(t)
    for g, r in (m.get("by_group") or {}).items():  # a test split of several family groups: each one's figures
        con.print(f"  {g} ({r['n']} test problems, model accuracy {r['model_accuracy']:.1%}): " + "; ".join(
            f"{name.replace('_', ' ')} saves {r[name]['tokens_saved']:.1%} at agreement {r[name]['agreement']:.1%} "
            f"[{r[name]['agreement_ci95'][0]:.1%}, {r[name]['agreement_ci95'][1]:.1%}]"
            for name in ("probe", "forced_answer", "correctness_probe") if name in r)
            + f"; oracle {r['oracle_tokens_saved']:.1%}",
            markup=False, emoji=False, highlight=False, soft_wrap=True)


config_command(app, "collect", CollectConfig, run_collect, show=_show_collect, kind="exit-collect")
config_command(app, "train", TrainConfig, run_train, show=_show_train, kind="exit-probe")
config_command(app, "calibrate", CalibrateConfig, run_calibrate, show=_show_calibrate, run_dir=_probe_folder)
config_command(app, "eval", EvalConfig, run_eval, show=lambda m: print_table(m, Console()), kind="exit")
config_command(app, "run", RunConfig, run_live, kind="exit-run")  # the live view already showed it
config_command(app, "selftrain", SelfTrainConfig, run_selftrain, show=show_selftrain, kind="exit-selftrain")
