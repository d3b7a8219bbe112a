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

The held-out headline (#33 item 4; `--headline`, only that part): the shipped `smollm2-135m-reasoner-v2` letter probe
at its CRC τ, the forced answer (DEER-style) and the correctness probe (Zhang et al. 2025, `exit eval
--correctness-probe`, labels "gold" and "final") with τ calibrated by the same rule on the same mixed val problems,
and the oracle, on TEST problems of the held-out families and of the original families separately (never used for
training, choosing or calibrating):

    python bench/early_exit.py --headline --quick --json bench/results/early_exit_headline.json
    python bench/early_exit.py --headline --quick --headline-collects A,B,T --json ...   # collects made already

The collects are the shipped probe's own (seed 0: 80 train, 50 + 50 val, 40 held-out test; seed 1: 120 train,
100 + 100 val) and one of test problems only (seed 2: 100 original + 60 held-out; full size 300 + 300), merged with
the test rows alternating groups, so the live sample (`--headline-live N`, one problem at a time: the latency of one
request; default 0, offline only) holds both groups.
"""

from __future__ import annotations

import argparse
import json
import os
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


HEADLINE_MODEL = "smollm2-135m-reasoner-v2"
# the shipped v2 probe's collects (scripts/train_exit_probe.py --merge A B) and the test-only collect
HEADLINE_COLLECTS = [
    dict(seed=0, n_train=80, n_val=50, n_val_held_out=50, n_test=0, n_test_held_out=40),
    dict(seed=1, n_train=120, n_val=100, n_val_held_out=100, n_test=0, n_test_held_out=0),
    dict(seed=2, n_train=0, n_val=0, n_val_held_out=0, n_test=100, n_test_held_out=60),
]
HEADLINE_FULL_TEST = dict(seed=2, n_train=0, n_val=0, n_val_held_out=0, n_test=300, n_test_held_out=300)


def alternate_test_groups(src: Path, out: Path) -> Path:
    """A copy of a collect whose test rows alternate family groups (original, held-out, ...), the other rows first
    in their order: `exit eval --n-live N` times the first N test problems, so they hold both groups."""
    from probescope.exit.collect import load_collected, row_group, save_collected

    col = load_collected(src)
    test = [i for i, r in enumerate(col.rows) if r["split"] == "test"]
    by = {g: [i for i in test if row_group(col.rows[i]) == g] for g in sorted({row_group(col.rows[i]) for i in test})}
    inter = [i for k in range(max(map(len, by.values()), default=0)) for g in sorted(by) for i in by[g][k: k + 1]]
    order = [i for i, r in enumerate(col.rows) if r["split"] != "test"] + inter
    acts = {L: [a[i, : int(col.lengths[i])] for i in order] for L, a in col.acts.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_collected(out, [col.rows[i] for i in order], acts, col.meta)
    return out


def headline_rows(col, idx: list, signals: dict, tau: dict, full) -> dict:
    """Per method on the problems `idx` (`signals`: name -> their traces, in the same order; `tau`: name -> τ):
    tokens saved, agreement with its Wilson interval, accuracy with its interval against full reasoning's, and the
    problems the exit answers right where full reasoning is wrong (gained) or the reverse (lost); the oracle; full
    reasoning's accuracy."""
    from probescope.exit.calibrate import simulate
    from probescope.exit.evaluate import accuracy_flips, oracle_outcome, wilson

    def row(o, t=None):
        return {"tokens_saved": round(o.tokens_saved, 4), "agreement": round(o.agreement, 4),
                "agreement_ci95": wilson(o.agreement * o.n, o.n), "accuracy": round(o.accuracy, 4),
                "accuracy_ci95": wilson(o.accuracy * o.n, o.n), **accuracy_flips(o), "n": o.n,
                "tau": None if t is None or t == float("inf") else round(float(t), 6)}

    out = {name: row(simulate(trs, tau[name]), tau[name]) for name, trs in signals.items()}
    out["oracle"] = row(oracle_outcome(col, idx))
    out["full"] = {"accuracy": round(full.accuracy, 4), "accuracy_ci95": wilson(full.accuracy * full.n, full.n),
                   "n": full.n, "mean_reasoning_tokens": round(float(full.full.mean()), 1)}
    return out


def bench_headline(args: argparse.Namespace) -> dict:
    """The shipped v2 probe, the forced answer, the correctness probe and the oracle on held-out-family and
    original-family test problems (see the module doc)."""
    from dataclasses import replace

    from probescope.exit.collect import load_collected, merge_collected, row_group
    from probescope.exit.evaluate import correctness_method, forced_traces, full_outcome, probe_traces
    from probescope.probes.base import load_probe

    root = Path(args.work) / HEADLINE_MODEL / "headline"
    t0, load0 = time.time(), os.getloadavg()
    if args.headline_collects:
        paths = [Path(p) for p in args.headline_collects.split(",") if p]
    else:
        specs = HEADLINE_COLLECTS[:2] + [HEADLINE_COLLECTS[2] if args.quick else HEADLINE_FULL_TEST]
        paths = []
        for k, spec in enumerate(specs):
            out = root / f"collect{k}"
            if not (out / "collect.json").exists():
                run_collect(CollectConfig(model=HEADLINE_MODEL, out=str(out), layers=[10, 15, 20, 24], stride=1000,
                                          max_new_tokens=160, batch_size=args.batch_size, shots=1, **spec),
                            quiet=args.quiet)
            paths.append(out)
    t1 = time.time()
    merge_collected([str(p) for p in paths], root / "merged-in-order")
    col_path = alternate_test_groups(root / "merged-in-order", root / "merged")
    probe_path = str(ROOT / f"src/probescope/assets/exit/{HEADLINE_MODEL}.probe.safetensors")
    n_live = args.headline_live
    cfg = EvalConfig(collect=str(col_path), probe=probe_path, out=str(root / "eval"), live=n_live > 0, n_live=n_live,
                     batch_size=1, max_new_tokens=160, correctness_probe=True, mode="probe")
    m = run_eval(cfg, quiet=args.quiet)
    t2 = time.time()
    col, probe = load_collected(col_path), load_probe(probe_path)
    test = col.split("test")
    final = correctness_method(col, replace(cfg, correctness_label="final"))
    cal = m["calibration"]
    inf = float("inf")
    tau = {"probe": cal["probe"]["tau"], "forced_answer": cal["forced_answer"]["tau"],
           "correctness_probe": cal["correctness_probe"]["tau"], "correctness_probe_final": final["calibration"].tau}
    tau = {k: inf if v is None else v for k, v in tau.items()}
    signals = {"probe": probe_traces(col, test, probe, "probe"), "forced_answer": forced_traces(col, test)}
    c_gold = correctness_method(col, cfg)  # the same fit as in run_eval (seeded)
    signals["correctness_probe"], signals["correctness_probe_final"] = c_gold["traces"], final["traces"]
    groups = {}
    for g in ("held-out", "original"):
        pos = [k for k, i in enumerate(test) if row_group(col.rows[i]) == g]
        if not pos:
            continue
        idx = [test[k] for k in pos]
        sub = {name: [trs[k] for k in pos] for name, trs in signals.items()}
        groups[g] = headline_rows(col, idx, sub, tau, full_outcome(col, idx))
    live = m.get("live")
    ratio = (live["wallclock_saved"] / live["tokens_saved"]) if live and live["tokens_saved"] > 0 else None
    return {
        "model": HEADLINE_MODEL, "probe": "shipped", "collects": [str(p) for p in paths],
        "n_train": len(col.split("train")), "n_val": len(col.split("val")),
        "val_mix": cal["probe"]["mix_text"], "target_agreement": 0.99, "rule": "crc",
        "calibration": {k: {f: v.get(f) for f in ("tau", "n", "feasible", "risk_bound", "val_agreement",
                                                  "val_tokens_saved", "groups")} for k, v in cal.items()},
        "correctness_probe": {"gold": m["correctness_probe"],
                              "final": {**final["info"], "tau": None if tau["correctness_probe_final"] == inf
                                        else tau["correctness_probe_final"]}},
        "groups": groups,
        "live": live, "live_batch_size": 1, "wallclock_per_token_saved": None if ratio is None else round(ratio, 4),
        "shipped_tau": json.loads(Path(probe_path.replace(".probe.safetensors", ".calibration.json")).read_text())["tau"],
        "seconds": {"collect": round(t1 - t0, 1), "eval": round(t2 - t1, 1), "all": round(time.time() - t0, 1)},
        "load_average": {"start": [round(v, 2) for v in load0], "end": [round(v, 2) for v in os.getloadavg()]},
    }


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
    ap.add_argument("--headline", action="store_true",
                    help=f"only the held-out headline (#33 item 4) on {HEADLINE_MODEL}: its shipped probe, the forced "
                         "answer, the correctness probe and the oracle on held-out- and original-family test problems")
    ap.add_argument("--headline-collects", default="",
                    help="comma-separated `exit collect` runs to use instead of collecting them (the probe's train/val "
                         "collects and a test collect)")
    ap.add_argument("--headline-live", type=int, default=0,
                    help="time live runs, one problem at a time, on the first N test problems (groups alternate); "
                         "0: none, offline only (40 problems did not finish in 45 min on a loaded 2-core CPU)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models already in --json (run models with different sizes one by one)")
    args = ap.parse_args()
    results: dict = json.loads(Path(args.json).read_text()) if args.merge and Path(args.json).exists() else {}
    if args.transfer_from:
        return transfer_only(args, results)
    if args.headline:
        sys.path.insert(0, str(ROOT / "bench"))
        from _common import machine

        with torch_threads(args.threads if args.threads > 0 else None):
            results["headline"] = {**bench_headline(args), "machine": machine(), "quick": args.quick}
        atomic_write_json(args.json, results)
        print(json.dumps(results["headline"]["groups"], indent=1))
        return
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
