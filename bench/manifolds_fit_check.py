"""The next-month circle at the last token fitted two ways — on the task's own prompts (one per month) and on 16
lead-sentence prompts per month (`manifold move --fit-contexts 16`) — and how each reads the evaluated prompts' month.

    python bench/manifolds_fit_check.py gemma3-270m 12,14,16 --json PATH [--quick] [--into bench/results/manifolds_months_fit_gemma.json]

Per layer: the circle R² of each fit (5 PCA axes of the 12 month means); the mean |error| (months) and the share
within half a month of the month each circle reads from the 12 evaluated prompts (in-sample for the own fit,
held-out for the lead fit); and how far the evaluated prompts sit from the lead fit's mean of their month inside its
circle plane, over the spread of those means there. Writes the rows to --json (with the machine), and under
"fit_check" in the --into JSON when given. --quick: 4 lead prompts per month instead of 16.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from _common import machine, parser, write_json


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("layers", help="comma-separated layers, e.g. 12,14,16")
    ap.add_argument("--contexts", type=int, default=0, help="lead prompts per month (default 16; 4 with --quick)")
    ap.add_argument("--into", default="", help="JSON file to add the rows to (under fit_check)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from probescope import load_model
    from probescope.manifolds.move import arithmetic_prompts, context_prompts, position_fits

    layers = [int(x) for x in args.layers.split(",")]
    args.contexts = args.contexts or (4 if args.quick else 16)
    t, c = time.perf_counter(), time.process_time()
    model, tok = load_model(args.model)
    prompts, _, P = arithmetic_prompts("next-month")
    own = position_fits(model, tok, prompts, layers, P, 5, "last")
    lead = position_fits(model, tok, prompts, layers, P, 5, "last", fit_on=context_prompts("next-month", args.contexts))
    v = np.array([p.value for p in prompts])
    rows = []
    for L in layers:
        (key, fo), = own[L].items()
        fl = lead[L][key]
        X = fo.acts  # the evaluated prompts' residuals at the last token

        def reads(circle) -> dict:
            d = np.abs(np.mod(circle.value(X) - v + P / 2, P) - P / 2)
            return {"mean_abs_error_months": round(float(d.mean()), 3), "within_half_month": round(float((d < 0.5).mean()), 3)}

        Q = fl.circle.plane()
        shift = np.linalg.norm((X - fl.means[v]) @ Q, axis=1).mean()
        spread = np.linalg.norm((fl.means - fl.means.mean(0)) @ Q, axis=1).mean()
        rows.append({"layer": L, "r2_own": round(fo.circle.r2, 3), "r2_lead": round(fl.circle.r2, 3),
                     "own_reads_own_in_sample": reads(fo.circle), "lead_reads_own_held_out": reads(fl.circle),
                     "shift_over_spread": round(float(shift / spread), 3)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"command": f"python bench/manifolds_fit_check.py {args.model} {args.layers} --contexts {args.contexts}",
           "seconds": round(time.perf_counter() - t, 1), "cpu_seconds": round(time.process_time() - c, 1), "rows": rows}
    print(f"{out['seconds']} s wall, {out['cpu_seconds']} CPU s")
    write_json(args.json_path, {"bench": "manifolds_fit_check", "model": args.model, "quick": args.quick,
                                "machine": machine(), **out})
    if args.into:
        with open(args.into) as f:
            res = json.load(f)
        res["fit_check"] = out
        with open(args.into, "w") as f:
            f.write(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
