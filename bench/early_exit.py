"""Benchmark early exit of chain-of-thought: every method on the same held-out test problems, τ on a separate val split.

    python bench/early_exit.py --quick --json bench/results/early_exit.json     # 48 test problems per model
    python bench/early_exit.py --json bench/results/early_exit.json             # 500 test problems (hours on CPU)

Per model: `exit collect` (train/val/test problems, full greedy reasoning, activations, forced-answer curves),
`exit train` (attention probe on random prefixes, layer by validation), `exit eval` (calibrate τ on val with
conformal risk control at agreement >= 0.99; offline baselines on test; live timed runs of full reasoning and
early exit). The reasoner uses its shipped probe when `--shipped-probe` is given. Untuned models reason badly and
sit near chance: their figures are reported as measured.

Transfer (the `transfer` section, for the reasoner; `--no-transfer` skips it): the probe trained on the original
problem families (arith/convert, original phrasings) and its τ calibrated on their val split, evaluated on test
problems of the HELD-OUT families (`mcq.generate(..., held_out=True)`: phrasings and a kind no model or probe was
trained on, written to a JSONL file and collected with `--data`), without recalibration (the in-distribution τ)
and with recalibration (τ from a val split of held-out-family problems, disjoint from their test problems).

    python bench/early_exit.py --transfer-from bench/results/early_exit.json --json bench/results/early_exit_transfer_full.json

runs only the transfer section at full size (200 val + 200 test held-out-family problems), with the shipped probe and
the in-distribution τ and figures of an earlier full run made with `--shipped-probe` (its JSON).
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
from probescope.tasks import mcq  # noqa: E402
from probescope.probes.base import torch_threads  # noqa: E402

MODELS = ["smollm2-135m-reasoner", "smollm2-135m", "gemma3-270m"]
TRANSFER_MODELS = ("smollm2-135m-reasoner",)


def write_held_out_file(path: Path, n_val: int, n_test: int, seed: int = 0) -> Path:
    """Held-out-family problems (val for recalibration, test for evaluation) as JSONL for `exit collect --data`."""
    rows = [{"question": p.question, "options": list(p.options), "answer": p.letter, "split": split,
             "family": p.family}
            for split, n in (("val", n_val), ("test", n_test)) for p in mcq.generate(split, n, seed, held_out=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _summary(out, full, oracle, tau) -> dict:
    return {"tokens_saved": round(out.tokens_saved, 4), "agreement": round(out.agreement, 4),
            "accuracy": round(out.accuracy, 4), "accuracy_full": round(full.accuracy, 4), "n": out.n,
            "oracle_fraction": round(out.tokens_saved / oracle.tokens_saved, 4) if oracle.tokens_saved > 0 else None,
            "tau": None if tau is None or tau == float("inf") else round(float(tau), 6)}


def bench_transfer(model: str, args: argparse.Namespace, in_col: Path, probe: str, in_metrics: dict) -> dict:
    """The in-distribution probe and τ on held-out-family test problems, without and with recalibration."""
    from probescope.exit.calibrate import calibrate, simulate
    from probescope.exit.collect import load_collected
    from probescope.exit.evaluate import forced_traces, full_outcome, oracle_outcome, probe_traces
    from probescope.probes.base import load_probe

    n_val, n_test = (100, 48) if args.quick else (200, 200)
    n_val, n_test = args.transfer_n_val or n_val, args.transfer_n_test or n_test
    root = Path(args.work) / model / "transfer"
    old = (root / "held_out.jsonl").read_text() if (root / "held_out.jsonl").exists() else None
    data = write_held_out_file(root / "held_out.jsonl", n_val, n_test)
    t0 = time.time()
    cfg = CollectConfig(model=model, out=str(root / "collect"), data=str(data), n_train=0, n_val=n_val, n_test=n_test,
                        max_new_tokens=args.max_new_tokens or (128 if args.quick else 160), batch_size=args.batch_size,
                        shots=1)
    done = root / "collect" / "collect.json"
    meta = json.loads(done.read_text()) if done.exists() else {}
    if old == data.read_text() and meta.get("model") == model and meta.get("config", {}).get(
            "max_new_tokens") == cfg.max_new_tokens:  # the same held-out problems were collected already: reuse
        col_path = root / "collect"
    else:
        run_collect(cfg, quiet=args.quiet)
        col_path = Path(cfg.out)
    col, p = load_collected(col_path), load_probe(probe)
    val, test = col.split("val"), col.split("test")
    full, oracle = full_outcome(col, test), oracle_outcome(col, test)
    ptr, ftr = probe_traces(col, test, p, "probe"), forced_traces(col, test)
    cal_in = in_metrics["calibration"]
    tau_p_in = cal_in["probe"]["tau"] if cal_in["probe"]["tau"] is not None else float("inf")
    tau_f_in = cal_in["forced_answer"]["tau"] if cal_in["forced_answer"]["tau"] is not None else float("inf")
    cal_p = calibrate(probe_traces(col, val, p, "probe"), 0.99, "crc")
    cal_f = calibrate(forced_traces(col, val), 0.99, "crc")
    val_full = full_outcome(col, val)
    out = {
        "families": "held-out phrasings of every kind + the held-out kind 'distance' (mcq held_out=True)",
        "n_val": len(val), "n_test": len(test), "model_accuracy_held_out": round(full.accuracy, 4),
        "model_accuracy_held_out_val": round(val_full.accuracy, 4),
        "in_distribution": {"probe": {k: in_metrics["methods"]["probe"].get(k) for k in
                                      ("tokens_saved", "agreement", "accuracy", "n")},
                            "model_accuracy": in_metrics["model_accuracy"], "tau_probe": cal_in["probe"]["tau"],
                            "tau_forced": cal_in["forced_answer"]["tau"]},
        "probe_no_recalibration": _summary(simulate(ptr, tau_p_in), full, oracle, tau_p_in),
        "probe_recalibrated": {**_summary(simulate(ptr, cal_p.tau), full, oracle, cal_p.tau),
                               "feasible": cal_p.feasible, "val_agreement": round(cal_p.val_agreement, 4)},
        "forced_no_recalibration": _summary(simulate(ftr, tau_f_in), full, oracle, tau_f_in),
        "forced_recalibrated": _summary(simulate(ftr, cal_f.tau), full, oracle, cal_f.tau),
        "oracle": _summary(oracle, full, oracle, None),
        "seconds": round(time.time() - t0, 1),
    }
    return out


def bench_model(model: str, args: argparse.Namespace) -> dict:
    sizes = dict(n_train=64, n_val=100, n_test=48, max_new_tokens=128) if args.quick else \
        dict(n_train=400, n_val=400, n_test=500, max_new_tokens=160)
    for k in ("n_train", "n_val", "n_test", "max_new_tokens"):
        if getattr(args, k):
            sizes[k] = getattr(args, k)
    root = Path(args.work) / model
    t0 = time.time()
    col = root / "collect"
    run_collect(CollectConfig(model=model, out=str(col), n_train=sizes["n_train"], n_val=sizes["n_val"],
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
    if args.transfer and model in args.transfer_models.split(","):
        try:
            out["transfer"] = bench_transfer(model, args, Path(col), probe, m)
        except Exception as e:  # the transfer section must not lose the model's other figures
            traceback.print_exc()
            out["transfer"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def transfer_only(args: argparse.Namespace, results: dict) -> None:
    """The transfer section alone for the shipped probe, its in-distribution side read from `--transfer-from`."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import machine

    src = json.loads(Path(args.transfer_from).read_text())
    with torch_threads(args.threads if args.threads > 0 else None):
        for model in [m for m in args.transfer_models.split(",") if m]:
            saved = src[model]  # a full run's JSON keeps the methods at the top level (see bench_model)
            m = {"methods": saved, "model_accuracy": saved["model_accuracy"], "calibration": saved["calibration"]}
            probe = str(ROOT / f"src/probescope/assets/exit/{model}.probe.safetensors")
            t0 = time.time()
            tr = bench_transfer(model, args, Path(args.work) / model / "collect", probe, m)
            results[model] = {"transfer": tr, "in_distribution_from": args.transfer_from, "probe": "shipped",
                              "seconds": round(time.time() - t0, 1), "machine": machine()}
            atomic_write_json(args.json, results)
    print(json.dumps(results, indent=1)[:3000])


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
    ap.add_argument("--transfer", action=argparse.BooleanOptionalAction, default=True,
                    help="the transfer section (reasoner only): in-distribution probe on held-out problem families")
    ap.add_argument("--transfer-models", default=",".join(TRANSFER_MODELS), help="models that get the transfer section")
    ap.add_argument("--transfer-n-val", type=int, default=0, help="held-out-family val problems (recalibration)")
    ap.add_argument("--transfer-n-test", type=int, default=0, help="held-out-family test problems")
    ap.add_argument("--transfer-from", default="",
                    help="only the transfer section, for the shipped probe, with the in-distribution τ and figures of "
                         "this earlier --shipped-probe bench JSON")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models already in --json (run models with different sizes one by one)")
    args = ap.parse_args()
    results: dict = json.loads(Path(args.json).read_text()) if args.merge and Path(args.json).exists() else {}
    if args.transfer_from:
        return transfer_only(args, results)
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
