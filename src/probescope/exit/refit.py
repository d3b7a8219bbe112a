"""Re-fit the exit probe on the model as it is now (self-training's `--drift refit`).

A probe fitted on the start model may stop reading the model once training has moved it. `refit_probe` fits a new
one on the current model with the exit wing's own pieces, in the order a user runs them by hand: full greedy
reasoning on a sample of problems with the residual stream recorded at the probe's layer (`collect.collect_problems`,
saved as an `exit collect` folder), a probe of the same kind at the same layer fitted on the first two thirds
(`train.fit_exit_probe`, with the old probe's training settings when it recorded them), and τ calibrated on the
last third (`calibrate.calibrate` on `evaluate.probe_traces`, at the policy's checks). With `keep="better"` the probe
in use is kept (with its τ) when it reads those last-third problems at least as well (validation log-loss against the
current model's own answers, `train.val_score`): a refit on a small sample can memorize its problems and read new
ones worse than the old probe. Everything lands in one folder
(`collect/`, `probe/` with its `calibration.json`, so `exit run --probe FOLDER/probe` reads it too); the returned
record holds the reasoning tokens decoded and the seconds spent, which self-training counts as the refit's cost.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

from ..tasks import mcq
from .answer import LETTERS, cue_ids

MIN_FIT = 8  # train problems `fit_exit_probe` needs


def refit_split(n: int) -> tuple[int, int]:
    """(train, val) counts of a refit sample of n problems: a third (at least one) calibrates τ, the rest fit."""
    n_val = max(1, n // 3)
    return n - n_val, n_val


def check_refittable(probe: Any, n: int) -> None:
    """Raise a clear error unless `probe` can be re-fitted by `exit train`'s trainer on a sample of `n` problems."""
    from ..probes.attention import AttentionProbe

    if not isinstance(probe, AttentionProbe):
        raise ValueError(f"--drift refit re-fits the probe with `exit train`'s trainer, which fits attention probes; "
                         f"this probe is {type(probe).__name__}: use an attention probe (`probescope exit train`) or "
                         "--drift measure|recalibrate")
    n_train, _ = refit_split(n)
    if n_train < MIN_FIT:
        raise ValueError(f"--refit-n {n} leaves {n_train} problems to fit on; the probe needs {MIN_FIT}: use --refit-n "
                         f"{MIN_FIT + math.ceil(MIN_FIT / 2)} or more")


def train_settings(probe: Any, seed: int):
    """`exit train`'s config with the settings the old probe was trained with (when it recorded them) and `seed`."""
    from .train import TrainConfig

    saved = dict((getattr(probe, "fit_info", None) or {}).get("exit_config") or {})
    names = {f.name for f in fields(TrainConfig)} - {"collect", "out", "layers", "seed", "threads", "quiet"}
    kw = {k: v for k, v in saved.items() if k in names}
    kw.setdefault("n_heads", getattr(probe, "n_heads", 4))
    return TrainConfig(layers=[probe.layer], seed=seed, **kw)


def refit_probe(model: Any, tokenizer: Any, problems: Sequence[mcq.MCQProblem], probe: Any, out: str | Path, *,
                seed: int, every: int = 0, mode: str = "probe", target: float = 0.95, rule: str = "empirical",
                max_new_tokens: int = 160, batch_size: int = 16, model_name: str = "", keep: str = "new",
                current_tau: float = math.inf) -> dict:
    """Fit a probe like `probe` (kind, layer, training settings) on `model`'s full reasoning of `problems` and
    calibrate its τ (`target`, `rule`, answer `mode`); write `out/collect`, `out/probe` (+ calibration.json); return
    the record: tokens decoded, seconds, the split, both probes' validation scores, which was kept (`keep`: "new", or
    "better": the probe in use and `current_tau` stay when their val log-loss is no worse) and its τ."""
    from ..core.models.registry import model_id
    from ..probes.base import load_probe
    from .calibrate import calibrate, calibration_binding
    from ..core.io import atomic_write_json
    from .collect import collect_problems, load_collected, save_collected
    from .evaluate import probe_traces
    from .formats import get_format
    from .train import fit_exit_probe, val_score

    t0 = time.perf_counter()
    check_refittable(probe, len(problems))
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # a refit killed half-way is redone from the start
    n_train, n_val = refit_split(len(problems))
    probs = ([replace(p, split="train") for p in problems[:n_train]]
             + [replace(p, split="val") for p in problems[n_train:]])
    fmt = get_format(None)
    if every:  # the policy checks every N tokens: calibrate at those checks
        fmt = replace(fmt, boundary="every", every=every)
    layer = probe.layer
    rows, acts = collect_problems(model, tokenizer, probs, [layer], stride=max_new_tokens, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, quiet=True, fmt=fmt)
    save_collected(out / "collect", rows, acts, {"model": model_name, "model_id": model_id(model), "layers": [layer],
                                                 "nl": cue_ids(tokenizer, "\n")[0], "format": fmt.to_dict(),
                                                 "answers": "mcq", "letters": list(LETTERS)})
    col = load_collected(out / "collect")
    settings = train_settings(probe, seed)
    new = fit_exit_probe(col, layer, settings)
    score = val_score(col, new)
    current = val_score(col, probe)
    kept = "current" if keep == "better" and current["val_nll"] <= score["val_nll"] else "new"
    cal = calibrate(probe_traces(col, col.split("val"), new, mode), target, rule)
    if kept == "new":
        new.save(out / "probe")
        saved = {**cal.to_dict(), "mode": mode}
    else:  # the probe in use reads the current model better: it stays, with its τ
        probe.save(out / "probe")
        saved = {"tau": None if math.isinf(current_tau) else current_tau, "mode": mode, "kept": "current"}
    atomic_write_json(out / "probe" / "calibration.json",
                      {**saved, **calibration_binding(load_probe(out / "probe"), "mcq"), "collect": str(out / "collect")})
    tau = cal.tau if kept == "new" else current_tau
    return {"kept": kept, "val_nll_current": current["val_nll"], "val_acc_current": current["val_acc"],
            "refit_tau": None if math.isinf(cal.tau) else cal.tau, "n_train": n_train, "n_val": n_val, "layer": layer, "tokens": sum(r["n_fed"] for r in rows),
            "full_accuracy": sum(r["final"] == r["gold"] for r in rows) / len(rows),
            "val_nll": score["val_nll"], "val_acc": score["val_acc"],
            "tau": None if math.isinf(tau) else tau, "tau_note": cal.note,
            "val_agreement": cal.val_agreement, "val_tokens_saved": cal.val_tokens_saved,
            "seconds": time.perf_counter() - t0}
