"""Early exit during training: expert iteration with the exit probe cutting the rollouts vs without, same start.

    python bench/selftrain.py --quick --json bench/results/selftrain-quick.json

Both runs start from the shipped reasoner, see the same problems (new generated ones each round, the same option
orders), train the same LoRA steps with the same seeds, and are scored on the same held-out-family test problems
(full reasoning). Reported: rollout tokens saved, final accuracy of each (Wilson 95%) and their paired difference
(95% interval), mean reasoning length of the model's own full generations, sampling + training wall-clock ratio, and
the probe's drift (agreement with the model's own final answers on each round's monitor problems, at the start τ).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from _common import machine, parser, write_json

SIZES = {  # quick: minutes on 2 cores (threads 1); full: the issue's size
    True: dict(rounds=3, problems=8, k=2, n_test=32, drift_n=4, lora_steps=4, lora_batch=8, max_new_tokens=160,
               eval_rounds=False),
    False: dict(rounds=4, problems=64, k=4, n_test=200, drift_n=32, lora_steps=24, lora_batch=16, max_new_tokens=160,
                eval_rounds=True),
}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-reasoner")
    p.add_argument("--out", default="runs/bench-selftrain", help="run folders (resumed if present)")
    p.add_argument("--drift", default="measure", choices=("measure", "recalibrate"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    from probescope.exit.selftrain import SelfTrainConfig, run_selftrain
    from probescope.exit.selftrain import wilson
    from probescope.finetune.train import paired_diff

    size = SIZES[bool(args.quick)]
    runs, t0 = {}, time.perf_counter()
    for ex in ("off", "on"):
        if ex == "on":  # the same start model on the same test problems (greedy, same batches): scored once, by "off"
            src = Path(args.out) / "exit-off" / "rounds" / "r00" / "eval.json"
            dst = Path(args.out) / "exit-on" / "rounds" / "r00" / "eval.json"
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        cfg = SelfTrainConfig(model=args.model, out=str(Path(args.out) / f"exit-{ex}"), exit=ex, drift=args.drift,
                              threads=args.threads, quiet=False, **size)
        runs[ex] = run_selftrain(cfg)
        print(f"exit {ex}: {runs[ex]['totals']}", file=sys.stderr)
    on, off = runs["on"], runs["off"]
    fon, foff = on["final"], off["final"]
    tot_on, tot_off = on["totals"], off["totals"]

    def per_round(m: dict) -> list[dict]:
        return [{"round": r["round"], "accuracy_at_start": r["accuracy"], "reasoning_tokens_mean": r["reasoning_tokens_mean"],
                 "rollout_tokens": r["rollout_tokens"], "exited": r["exited"], "rollouts": r["rollouts"],
                 "accepted": r["accepted"], "rollout_accuracy": r["rollout_accuracy"],
                 "kept_reasoning_tokens_mean": r["kept_reasoning_tokens_mean"], "sampling_s": r["sampling_s"],
                 "train_s": r.get("train_s"), "probe_agreement_at_tau": r.get("drift", {}).get("agreement_in"),
                 "probe_agreement_at_end": r.get("drift", {}).get("agreement_at_end"),
                 "probe_tokens_saved_at_tau": r.get("drift", {}).get("tokens_saved_in")} for r in m["rounds"]]

    def final(m: dict) -> dict:
        f = m["final"]
        return {"accuracy": f["accuracy"], "accuracy_ci95": f["accuracy_ci95"], "n": f["n"],
                "reasoning_tokens_mean": f["reasoning_tokens_mean"]}

    start = off["rounds"][0]
    diff = paired_diff(fon["correct"], foff["correct"])
    res = {
        "bench": "selftrain", "quick": bool(args.quick), "model": args.model, "machine": machine(),
        "threads": args.threads, "sizes": size, "drift_policy": args.drift, "tau_start": on["tau_start"],
        "start_eval_shared": True, "start": {"accuracy": start["accuracy"], "accuracy_ci95": start["accuracy_ci95"],
                  "reasoning_tokens_mean": start["reasoning_tokens_mean"]},
        "exit_on": {"final": final(on), "totals": tot_on, "rounds": per_round(on), "stopped": on["stopped"]},
        "exit_off": {"final": final(off), "totals": tot_off, "rounds": per_round(off), "stopped": off["stopped"]},
        "rollout_tokens_saved": 1 - tot_on["cost_tokens"] / max(1, tot_off["cost_tokens"]),
        "accuracy_diff_on_minus_off": diff,
        "accuracy_wilson": {"on": wilson(sum(fon["correct"]), fon["n"]), "off": wilson(sum(foff["correct"]), foff["n"])},
        "reasoning_length_ratio_on_over_off": fon["reasoning_tokens_mean"] / max(1e-9, foff["reasoning_tokens_mean"]),
        "wallclock_ratio_on_over_off": tot_on["wallclock_s"] / max(1e-9, tot_off["wallclock_s"]),
        "sampling_ratio_on_over_off": tot_on["sampling_s"] / max(1e-9, tot_off["sampling_s"]),
        "bench_seconds": time.perf_counter() - t0,
    }
    write_json(args.json_path, res)
    print(f"rollout tokens saved {res['rollout_tokens_saved']:.1%}; final accuracy on {fon['accuracy']:.3f} vs off "
          f"{foff['accuracy']:.3f} (paired diff {diff['diff']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]); "
          f"wall-clock ratio {res['wallclock_ratio_on_over_off']:.2f}; reasoning length ratio "
          f"{res['reasoning_length_ratio_on_over_off']:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
