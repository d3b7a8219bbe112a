"""Benchmark early exit of chain-of-thought: every method on the same held-out test problems, τ on a separate val split.

    python bench/early_exit.py --quick --json bench/results/early_exit.json     # 48 test problems per model
    python bench/early_exit.py --json bench/results/early_exit.json             # 500 test problems (hours on CPU)

Per model: `exit collect` (train/val/test problems, full greedy reasoning, activations, forced-answer curves),
`exit train` (attention probe on random prefixes, layer by validation), `exit eval` (calibrate τ on val with
conformal risk control at agreement >= 0.99; offline baselines on test; live timed runs of full reasoning and
early exit). The reasoner uses its shipped probe when `--shipped-probe` is given. Untuned models reason badly and
sit near chance: their figures are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from probescope.exit.collect import CollectConfig, run_collect  # noqa: E402
from probescope.exit.evaluate import EvalConfig, run_eval  # noqa: E402
from probescope.exit.train import TrainConfig, run_train  # noqa: E402
from probescope.core.io import atomic_write_json  # noqa: E402
from probescope.probes.base import torch_threads  # noqa: E402

MODELS = ["smollm2-135m-reasoner", "smollm2-135m", "gemma3-270m"]


def bench_model(model: str, args: argparse.Namespace) -> dict:
    sizes = dict(n_train=64, n_val=100, n_test=48, max_new_tokens=128) if args.quick else \
        dict(n_train=400, n_val=400, n_test=500, max_new_tokens=160)
    for k in ("n_train", "n_val", "n_test", "max_new_tokens"):
        if getattr(args, k):
            sizes[k] = getattr(args, k)
    root = Path(args.work) / model
    t0 = time.time()
    col = run_collect(CollectConfig(model=model, out=str(root / "collect"), n_train=sizes["n_train"], n_val=sizes["n_val"],
                                    n_test=sizes["n_test"], max_new_tokens=sizes["max_new_tokens"],
                                    batch_size=args.batch_size, shots=1), quiet=args.quiet)
    t1 = time.time()
    probe = str(root / "probe")
    if args.shipped_probe and model == "smollm2-135m-reasoner":
        probe = str(ROOT / "src/probescope/assets/exit/smollm2-135m-reasoner.probe.safetensors")
    else:
        run_train(TrainConfig(collect=str(col), out=probe), quiet=args.quiet)
    t2 = time.time()
    m = run_eval(EvalConfig(collect=str(col), probe=probe, out=str(root / "eval"), max_new_tokens=sizes["max_new_tokens"],
                            batch_size=args.batch_size, n_live=args.n_live), quiet=args.quiet)
    out = dict(m["methods"])
    out["model_accuracy"] = m["model_accuracy"]
    out["calibration"] = m["calibration"]
    out["probe_layer"] = m["probe_layer"]
    out["live"] = m.get("live")
    out["seconds"] = {"collect": round(t1 - t0, 1), "train": round(t2 - t1, 1), "eval": round(time.time() - t2, 1)}
    out["sizes"] = sizes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="bench/results/early_exit.json")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--n-test", type=int, default=0, help="override the number of test problems")
    ap.add_argument("--n-train", type=int, default=0, help="override the number of train problems")
    ap.add_argument("--n-val", type=int, default=0, help="override the number of val problems")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="override the reasoning token limit")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-live", type=int, default=0,
                    help="time live runs (full vs early exit) on the first N test problems (0: all of them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/bench-early-exit")
    ap.add_argument("--shipped-probe", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models already in --json (run models with different sizes one by one)")
    args = ap.parse_args()
    results: dict = json.loads(Path(args.json).read_text()) if args.merge and Path(args.json).exists() else {}
    with torch_threads(args.threads if args.threads > 0 else None):
        for model in [m for m in args.models.split(",") if m]:
            try:
                results[model] = bench_model(model, args)
            except Exception as e:  # one model missing (e.g. the adapter) must not lose the others
                traceback.print_exc()
                results[model] = {"error": f"{type(e).__name__}: {e}"}
            atomic_write_json(args.json, results)
    print(json.dumps({k: {m: {f: v.get(f) for f in ("tokens_saved", "agreement", "accuracy")}
                          for m, v in r.items() if isinstance(v, dict) and "tokens_saved" in v}
                      if "error" not in r else r for k, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
