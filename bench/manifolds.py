"""Concept-manifold benchmark: the shapes of days, months and the line-character count per layer, and moving days
along their circle, on SmolLM2-135M (or --model).

    python bench/manifolds.py [--quick] --json bench/results/manifolds.json [--model smollm2-135m] [--threads 1]
    python bench/manifolds.py --parts linebreak --model gemma3-270m --json bench/results/manifolds_linebreak_gemma.json

Find (`probescope manifold find`): per layer, the circle R² in the best PCA plane of the per-value means (days,
months) or the spline-curve R² (line count), each beside two baselines (values shuffled across examples; values
permuted as wholes), the leave-one-value-out error, and the held-out linear read-out R²; the best layer of each;
and the read-out from the three best layers side by side (the line count: every word of a text is an example, and
the folds keep each text on one side).
Move (`probescope manifold move`): the circle edit at the day token of "If today is {Day}, then tomorrow is" (and
next-month, and Engels et al.'s "{N} days from {Day} is" arithmetic) per layer and strength, the best layer (set)
with its 95% Wilson interval, the token swap and every baseline at that layer; with --positions, also at the
positions that read the day (the last token; every token from the day on).
Line breaks (`probescope manifold linebreak`): the newline log-odds fit on count and width, the pair gap when only
the width changes, and the heads and MLPs that carry it at the last token, with what they read out.
Full size (sized to one hour of one core: 2,608 CPU s, 52 minutes wall on SmolLM2-135M at load 2-4): find reads
every layer with 20 draws per baseline for days and months, and 5 for the line count's 40,000 words (there the
shuffled p95 is -0.005 with 5 draws; 20 at every layer would cost about 1,500 CPU s more); the move runs all four
tasks at the value token and at every position from it on (`--positions concept,all`), on every second layer and the
last, plus the four layer sets, at strengths 1, 2, 4; the arithmetic tasks (days, months) on 132 (prompt, target)
rows each, drawn with the seed, of their 252 and 1,452 (all of the months' would cost about as much as the other
three tasks together; `--limit` to change).
--quick (about 20 minutes on 2 busy cores): fewer shuffles, next-day only for the move (at the day token and at every
position from it on), and every second layer for the months, the count and the move.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import machine, parser, write_json


def _layer_row(r: dict, key: str) -> dict:
    return {"layer": r["layer"], "r2": round(r[key], 4), "r2_shuffled": round(r["baseline"][key], 4),
            "r2_shuffled_p95": round(r["baseline_p95"][key], 4), "r2_order": round(r["baseline_order"][key], 4),
            "r2_order_p95": round(r["baseline_order_p95"][key], 4), "loo": round(r["loo"], 3),
            "loo_shuffled": round(r["baseline"]["loo"], 3), "loo_order": round(r["baseline_order"]["loo"], 3),
            "cv": round(r["cv"], 3), "probe_r2": round(r["probe"], 4),
            "probe_r2_shuffled_p95": round(r["baseline_p95"]["probe"], 4),
            "probe_r2_order": round(r["baseline_order"]["probe"], 4),
            "probe_r2_order_p95": round(r["baseline_order_p95"]["probe"], 4), "dims90": r["dims90"]}


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench-manifolds", help="run folders go under here")
    ap.add_argument("--parts", default="find,move,linebreak", help="comma-separated parts to run")
    ap.add_argument("--concepts", default="days,months,linecount", help="find: the concepts")
    ap.add_argument("--layers", default="", help="layers read and edited one at a time, e.g. 12,16,20 (default: all; "
                                                  "every second with --quick)")
    ap.add_argument("--sets", default="", help="move: layer sets edited together (default: 4+6+8,10+12+14,"
                                                "6+10+14+18,10+14+18+22 cut to the model)")
    ap.add_argument("--linecount-n", type=int, default=0, help="line-count examples (default 6,000; 40,000 full)")
    ap.add_argument("--n-shuffles", type=int, default=0, help="find: shuffled draws (default 10; 20 full, 5 for the "
                                                               "line count)")
    ap.add_argument("--limit", type=int, default=-1, help="move: (prompt, target) rows per task drawn at random "
                                                          "(0: all; default all, but 132 for the arithmetic tasks)")
    ap.add_argument("--tasks", default="", help="move tasks (default: next-day with --quick, else all four)")
    ap.add_argument("--positions", default="concept,all",
                    help="move: where to edit, each a run (concept: the value token; last, readers, all: see "
                         "`manifold move --positions`)")
    args = ap.parse_args()
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    from probescope import load_model
    from probescope.core.sites import n_layers
    from probescope.core.io import atomic_write_json
    from probescope.manifolds import FindConfig, LineBreakConfig, MoveConfig, run_find, run_linebreak, run_move

    def save() -> None:
        atomic_write_json(Path(args.json_path), res)

    model, tok = load_model(args.model)
    L = n_layers(model)
    parts = set(args.parts.split(","))
    res: dict = {"bench": "manifolds", "model": args.model, "quick": args.quick, "machine": machine(),
                 "threads": args.threads, "parts": sorted(parts), "find": {}, "move": {}}
    q = args.quick
    half = list(range(0, L, 2)) + ([L - 1] if (L - 1) % 2 else [])  # every second layer and the last
    every = half if q else None  # the layers find reads (days: all, unless --layers)
    moved = half  # the layers the move edits one at a time
    if args.layers:
        every = moved = [int(x) for x in args.layers.split(",")]
    # the line count: every word of every text an example (about 38 per text); 15,000 read out R² 0.87-0.96, 40,000
    # take SmolLM2's three-layer read-out to 0.900 (240 CPU s)
    lc = args.linecount_n or (6000 if q else 40000)
    # draws per baseline: 10 quick; 20 full, but 5 for the line count (40,000 words: about 1 CPU s a draw a layer)
    finds = [("days", 280, None if not args.layers else every, 20), ("months", 480, every, 20),
             ("linecount", lc, every, 5)]
    finds = [f for f in finds if f[0] in args.concepts.split(",")]
    for concept, n, layers, draws in (finds if "find" in parts else []):
        cfg = FindConfig(model=args.model, concept=concept, n=n, layers=layers,
                         n_shuffles=args.n_shuffles or (10 if q else draws),
                         out=f"{args.out}/find-{concept}", threads=args.threads)
        t, c = time.perf_counter(), time.process_time()
        r = run_find(cfg, model, tok)
        key = r["score"]
        res["find"][concept] = {
            "config": {"n": n, "n_examples": r["n_examples"], "n_values": r["n_values"], "k": cfg.k,
                       "n_shuffles": cfg.n_shuffles, "layers": "all" if layers is None else layers},
            "seconds": round(time.perf_counter() - t, 1), "cpu_seconds": round(time.process_time() - c, 1),
            "score": key, "verdict": r["verdict"],
            "best_layer": r["best_layer"], "best": _layer_row(next(x for x in r["layers"] if x["layer"] == r["best_layer"]), key),
            "probe_layer": r["probe_layer"], "probe_r2": round(r["probe"], 4),
            "probe_r2_shuffled_p95": round(r["probe_baseline_p95"], 4),
            "probe_r2_order_p95": round(next(x for x in r["layers"] if x["layer"] == r["probe_layer"])
                                        ["baseline_order_p95"]["probe"], 4),
            "folds_by_text": r["folds_by_text"],
            "probe_sets": [{k: (round(x, 4) if isinstance(x, float) else x) for k, x in p.items()}
                           for p in r["probe_sets"]],
            "layers": [_layer_row(x, key) for x in r["layers"]]}
        print(f"find {concept}: best layer {r['best_layer']} {key} {r['best_r2']:.3f} (order permuted p95 "
              f"{r['best_r2_order_p95']:.3f}), LOO {r['best_loo']:.3g}; probe R² {r['probe']:.3f} at layer "
              f"{r['probe_layer']}" + "".join(f"; layers {p['layers']} together {p['probe']:.3f} (shuffled p95 "
                                              f"{p['baseline_p95']:.3f})" for p in r["probe_sets"])
              + f" — {r['verdict']}", flush=True)
        save()  # each part as it lands: a long run that stops keeps what it did
    sets = ",".join(dict.fromkeys(  # the same sets on every model, each cut to the layers it has
        "+".join(str(x) for x in part if x < L) for part in ((4, 6, 8), (10, 12, 14), (6, 10, 14, 18), (10, 14, 18, 22))
        if any(x < L for x in part))) if not args.sets else args.sets
    tasks = args.tasks.split(",") if args.tasks else ["next-day"] if q else ["next-day", "next-month", "days", "months"]
    runs = [(task, pos) for task in tasks for pos in args.positions.split(",")] if "move" in parts else []
    for task, pos in runs:
        name = task if pos == "concept" else f"{task}@{pos}"
        limit = args.limit if args.limit >= 0 else 132 if task in ("days", "months") else 0
        cfg = MoveConfig(model=args.model, task=task, layers=moved, layer_sets=sets, strengths=[1.0, 2.0, 4.0],
                         positions=pos, limit=limit, out=f"{args.out}/move-{name}", threads=args.threads)
        t, c = time.perf_counter(), time.process_time()
        r = run_move(cfg, model, tok)
        res["move"][name] = {
            "config": {"strengths": cfg.strengths, "layers": moved, "layer_sets": sets, "positions": pos, "k": cfg.k,
                       "limit": limit, "rows": r["n_rows"], "prompts": r["n_prompts"]},
            "seconds": round(time.perf_counter() - t, 1), "cpu_seconds": round(time.process_time() - c, 1),
            "accuracy": r["accuracy"], "token_swap": r["token_swap"],
            "no_edit": r["no_edit"], "best": r["best"],
            "rows": [{k: x[k] for k in ("layers", "method", "strength", "success", "ci")} for x in r["rows"]]}
        b = r["best"]
        print(f"move {name}: circle best at {b['layers']} ×{b['strength']:g}: {b['success']:.1%} "
              f"[{b['ci'][0]:.1%}, {b['ci'][1]:.1%}]; token swap {r['token_swap']['success']:.1%}", flush=True)
        save()
    if "linebreak" in parts:
        cfg = LineBreakConfig(model=args.model, out=f"{args.out}/linebreak", threads=args.threads)
        t, c = time.perf_counter(), time.process_time()
        r = run_linebreak(cfg, model, tok)
        res["linebreak"] = {
            "config": {"widths": cfg.widths, "n": cfg.n, "pairs": cfg.pairs, "delta": cfg.delta, "lines": cfg.lines,
                       "folds": cfg.folds}, "seconds": round(time.perf_counter() - t, 1),
            "cpu_seconds": round(time.process_time() - c, 1), "verdict": r["verdict"], "compares": r["compares"],
            "behaviour": {k: v for k, v in r["behaviour"].items()}, "width_gap": r["width_gap"],
            "width_gap_ci": r["width_gap_ci"], "top": r["top"],
            "layers": [{"layer": x["layer"], **{k: round(x[k]["probe"], 4) for k in ("count", "width", "remaining")},
                        "remaining_shuffled_p95": round(x["remaining"]["probe_p95"], 4)} for x in r["layers"]]}
        print(f"linebreak: {r['verdict']}", flush=True)
    res["seconds"], res["cpu_seconds"] = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    write_json(args.json_path, res)


if __name__ == "__main__":
    main()
