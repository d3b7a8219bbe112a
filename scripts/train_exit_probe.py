"""Reproduce the shipped early-exit probes `src/probescope/assets/exit/<model>.probe.*`.

    python scripts/train_exit_probe.py            # collect (seed 0), train, calibrate on val, install
    python scripts/train_exit_probe.py --quick    # fewer problems (a smoke run; do not install it)
    python scripts/train_exit_probe.py --reuse    # calibrate and install the probe already trained in --work
    python scripts/train_exit_probe.py --model smollm2-135m-reasoner-v2 --n-train 80 --n-val 50 \
        --n-val-held-out 50 --n-test-held-out 40 --work runs/exit-shipped-v2      # v2's probe (#33 item 2)
    python scripts/train_exit_probe.py --model M --merge COLLECT_A COLLECT_B --work W   # runs of several seeds as one

Pipeline: `exit collect` on smollm2-135m-reasoner (N_TRAIN train, N_VAL val problems, no test problems: the test
split is the benchmark's), `exit train` (attention probe, 4 heads, 4 random prefix cuts per sequence, layer chosen
by validation log-loss), `exit calibrate` (conformal risk control, agreement >= 0.99 on the val split; the answer at an exit is the probe's
own prediction, mode "probe"). Installed:
`<name>.probe.safetensors`, `<name>.probe.json` (the probe) and `<name>.calibration.json` (τ and how it was chosen).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from probescope.exit.calibrate import calibrate, calibration_binding  # noqa: E402
from probescope.exit.collect import CollectConfig, load_collected, merge_collected, run_collect  # noqa: E402
from probescope.exit.evaluate import probe_traces  # noqa: E402
from probescope.exit.train import TrainConfig, run_train  # noqa: E402
from probescope.core.io import atomic_write_json  # noqa: E402
from probescope.probes.base import load_probe  # noqa: E402

MODEL = "smollm2-135m-reasoner"
ASSET = ROOT / "src" / "probescope" / "assets" / "exit"
N_TRAIN, N_VAL = 400, 160
# The probe needs labels (final answers) and newline checkpoints only: no forced-answer curve every few tokens.
STRIDE = 1000
# At an exit the answer is the probe's own prediction: the probe knows the final answer before the forced answer
# settles (on the val split, CRC-certified τ saves 57% in this mode and nothing in "forced" mode).
MODE = "probe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=MODEL, help="the reasoner (smollm2-135m-reasoner or smollm2-135m-reasoner-v2)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="runs/exit-shipped")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine, 2 when alone)")
    ap.add_argument("--reuse", action="store_true", help="calibrate and install the probe already in --work")
    ap.add_argument("--n-train", type=int, default=None, help=f"train problems (default {N_TRAIN}; --quick 32)")
    ap.add_argument("--n-val", type=int, default=None, help=f"original-family val problems (default {N_VAL}; --quick 16)")
    ap.add_argument("--n-val-held-out", type=int, default=0,
                    help="held-out-family val problems besides: τ certified on both groups (#33 item 3)")
    ap.add_argument("--n-test-held-out", type=int, default=0,
                    help="held-out-family test problems in the same collect (for `exit eval`; never calibrated on)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="COLLECT",
                    help="merge these `exit collect` runs (other seeds) into WORK/collect, then train and calibrate")
    args = ap.parse_args()
    n_train, n_val = (32, 16) if args.quick else (N_TRAIN, N_VAL)
    n_train, n_val = args.n_train or n_train, args.n_val or n_val
    work = Path(args.work)
    col, probe_dir = work / "collect", work / "probe"
    if args.merge:  # several runs (seeds) as one: more train problems, a larger val split for CRC
        merge_collected(args.merge, col)
        run_train(TrainConfig(collect=str(col), out=str(probe_dir), threads=args.threads))
    elif not args.reuse:
        run_collect(CollectConfig(model=args.model, out=str(col), n_train=n_train, n_val=n_val, n_test=0,
                                  n_val_held_out=args.n_val_held_out, n_test_held_out=args.n_test_held_out,
                                  max_new_tokens=160, seed=0, stride=STRIDE, threads=args.threads))
        run_train(TrainConfig(collect=str(col), out=str(probe_dir), threads=args.threads))
    data = load_collected(col)
    if data.meta.get("model") != args.model:
        raise SystemExit(f"{col} was collected on {data.meta.get('model')!r}, not {args.model!r}: pass --model")
    probe = load_probe(probe_dir)
    traces = probe_traces(data, data.split("val"), probe, MODE)
    cal = calibrate(traces, 0.99, "crc")
    print(cal)
    crc_note = None
    if not cal.feasible:  # conformal risk control cannot certify α = 0.01 with this many val problems
        crc_note = cal.to_dict()
        cal = calibrate(traces, 0.99, "empirical")
        print("fallback (no guarantee):", cal)
    if args.quick:
        return
    ASSET.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(probe_dir / "probe.safetensors", ASSET / f"{args.model}.probe.safetensors")
    shutil.copyfile(probe_dir / "probe.json", ASSET / f"{args.model}.probe.json")
    atomic_write_json(ASSET / f"{args.model}.calibration.json", {
        **cal.to_dict(), "consecutive": 1, "min_tokens": 0, "mode": MODE, "n_train": len(data.split("train")),
        "n_val": len(data.split("val")),
        **({"merged_from": data.meta["merged_from"]} if "merged_from" in data.meta else {}),
        **calibration_binding(probe, "mcq"), **({"crc_infeasible": crc_note} if crc_note else {})})
    print(f"installed {ASSET}/{args.model}.*")


if __name__ == "__main__":
    main()
