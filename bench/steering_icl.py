"""ICL ↔ steering benchmark (issue 18) on SmolLM2-135M.

    python bench/steering_icl.py [--quick] --json bench/results/steering_icl.json
    python bench/steering_icl.py --quick --only pipes_vs_water --json bench/results/steering_icl.json  # section 3
                                       # alone, written into the existing file (the other sections kept as they were)

1. Which generated tasks the model learns few-shot (first-token accuracy, 0 vs 5 shots; a task that gains < 0.2
   is reported and skipped) and, for those it can do, the function vector (top-10 heads by average indirect effect)
   and the mean-difference task vector added zero-shot vs 5-shot vs none.
2. The belief grid antonym vs uppercase: N shots of antonyms × steering strength m (the mean-difference task
   vector, both signs), log-odds per cell; the published form a·m + b + γ·N^(1−α) and the plain logistic baseline
   fitted on a checkerboard half and scored on the other half (r, R², flip boundary error in shots); the
   conversion "N shots ≡ strength m" with a bootstrap interval; vector → ICL checked by running the shots.
3. `pipes_vs_water`: the pipes-vs-water table's ICL rows on antonyms (`steering.compare_icl`): 0-shot vs a 5-shot
   prompt vs its function vector vs its task vector vs a LoRA (24 steps), all learning from the same 16 examples;
   first-token accuracy on 32 held-out queries, KL / perplexity on neutral text, seconds to make, prompt tokens and
   time at inference. Runs last (it trains a LoRA; the model is restored afterwards).
"""

from __future__ import annotations

import time

from _common import machine, parser, write_json


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--only", choices=["pipes_vs_water"], help="run this section alone and write it into the "
                   "existing --json file, keeping the other sections")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from probescope.core.models import load_model
    from probescope.steering.icl_run import IclConfig, run_icl

    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    if args.only == "pipes_vs_water":
        import json
        from pathlib import Path

        path = Path(args.json_path)
        res = json.loads(path.read_text()) if path.exists() else {}
        res["pipes_vs_water"] = pipes_vs_water(model, tok, args.quick)
        res["pipes_vs_water"]["machine"] = machine()
        write_json(args.json_path, res)
        return
    if args.quick:
        cfg = IclConfig(shots="0,1,2,3,4,6,8", strengths="-1.5,-1,-0.5,0,0.5,1,1.5", n_queries=24, n_dev=12, n_boot=100,
                        check_tasks="antonym,uppercase", fv=True, out="runs/bench-steering-icl-quick")
    else:
        cfg = IclConfig(shots="0,1,2,3,4,5,6,7,8",
                        strengths="-1.5,-1.25,-1,-0.75,-0.5,-0.25,0,0.5,1,1.5", n_queries=40,
                        n_dev=16, n_boot=300, check_tasks="antonym,uppercase,capital,next_letter,past,plural", fv=True,
                        out="runs/bench-steering-icl")
    res = run_icl(cfg, model, tok)
    res.pop("plots", None)
    pub, base = res["fits"]["published"], res["fits"]["logistic"]
    tasks = res.get("tasks", {})
    recovered = [n for n, r in tasks.items() if r.get("recovery_fv") is not None and max(
        r.get("recovery_fv") or 0, r.get("recovery_tv") or 0) >= 0.8]
    res["demands"] = {
        "heldout_r_ge_0.9": pub["heldout_r"] >= 0.9,
        "heldout_r2_ge_0.9": pub["heldout_r2"] >= 0.9,
        "flip_within_1_shot": pub["flip_error_max"] is not None and pub["flip_error_max"] <= 1.0
        and not pub["flip_missed"],
        "vector_recovers_80pct_on_2_tasks": len(recovered) >= 2,
        "tasks_recovered_80pct": recovered,
    }
    res["pipes_vs_water"] = pipes_vs_water(model, tok, args.quick)
    res["quick"] = bool(args.quick)
    res["machine"] = machine()
    res["bench_seconds"] = time.perf_counter() - t0
    write_json(args.json_path, res)


def pipes_vs_water(model, tok, quick: bool) -> dict:
    """Section 3: the ICL rows of the pipes-vs-water table (0-shot, 5-shot, FV, TV, LoRA) on antonyms."""
    from probescope.steering.compare_icl import run_icl_comparison, table_markdown
    from probescope.steering.jobs import IclCompareConfig

    cfg = IclCompareConfig(task="antonym", n_shots=5, n_examples=16, n_queries=32 if quick else 40,
                           out="runs/bench-steering-compare-icl" + ("-quick" if quick else ""))
    m = run_icl_comparison(cfg, model, tok)
    return {"rows": m["rows"], "table": table_markdown(m["rows"], cfg.n_shots), "vectors": m["vectors"],
            "config": m["config"], "examples": m["examples"], "seconds": m["seconds"], "quick": quick}


if __name__ == "__main__":
    main()
