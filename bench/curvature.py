"""Benchmark: K-FAC curvature edits vs baselines on a memorization organism built from SmolLM2-135M.

    python bench/curvature.py [--quick] --json bench/results/curvature.json [--root runs/curvature-bench]

1. Organism: SmolLM2-135M with the up/gate/down matrices of its last 8 blocks fine-tuned on 64 random canary records
   (8-token key → 24 tokens) and held-out-scored arithmetic (`probescope curvature organism`; reused when the folder
   holds a finished run with the same config).
2. Factors on the project's corpus (never holds the canaries), empirical and true Fisher (`curvature fit`).
3. Sweep of the share of curvature mass kept → canary exact recall, held-out perplexity, skill, for the curvature
   edit (both Fishers) and the baselines at the same parameter count: random components in the same eigenbasis,
   magnitude pruning, SVD (`curvature eval`). Every figure has a 95% interval (Wilson for rates, bootstrap over
   windows for perplexity). One thread: the machine is shared, so times are indicative.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parser, peak_rss_mb, write_json  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/curvature-bench", help="run folders (organism reused from here)")
    p.add_argument("--steps", type=int, default=50, help="organism training steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the factors and the sweep (the organism "
                   "keeps its own config's threads, so a finished organism is reused)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from probescope.curvature.config import EvalConfig, FitConfig, OrganismConfig
    from probescope.curvature.runner import run_eval, run_fit, run_organism

    root = Path(a.root)
    tokens = 8192 if a.quick else 32768
    keeps = ([0.9999, 0.999, 0.995, 0.99, 0.97] if a.quick else
             [0.99999, 0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.95, 0.8])
    windows = 16 if a.quick else 32
    t0 = time.perf_counter()
    ocfg = OrganismConfig(out=str(root / "organism"), steps=a.steps, threads=1, n_text_windows=windows)
    org = run_organism(ocfg, quiet=True)
    fits = {}
    for fisher in ("empirical", "true"):
        fcfg = FitConfig(out=str(root / f"fit-{fisher}-{tokens}"), organism=str(root / "organism"), fisher=fisher,
                         max_tokens=tokens, threads=a.threads)
        fits[fisher] = run_fit(fcfg, quiet=True)
    ecfg = EvalConfig(organism=str(root / "organism"),
                      factors=[fits["empirical"]["factors"], fits["true"]["factors"]],
                      out=str(root / f"eval-{'quick' if a.quick else 'full'}"), keeps=keeps,
                      methods=["kfac", "kfac:true", "random", "magnitude", "svd"], n_text_windows=windows, threads=a.threads)
    ev = run_eval(ecfg, quiet=True)
    from probescope.curvature import KFACFactors

    fe, ft = (KFACFactors.load(fits[k]["factors"]) for k in ("empirical", "true"))
    g_diff = {}
    for n in fe.names:  # how far the true Fisher's G is from the empirical one (trace-normalised), and its scale
        ge, gt = fe.G(n), ft.G(n)
        g_diff[n] = {"rel_diff_normalised": float((ge / ge.trace() - gt / gt.trace()).norm() / (ge / ge.trace()).norm()),
                     "trace_ratio_true_over_empirical": float(gt.trace() / ge.trace())}
    b = ev["base"]
    verdict = []
    for row in ev["summary"]["equal_ppl"]:
        for m in ("svd", "magnitude", "random"):
            if row.get(m) is not None:
                verdict.append({"keep": row["keep"], "ppl": row["ppl"], "vs": m, "kfac_recall": row["kfac_recall"],
                                "baseline_recall": row[m],
                                "ratio": (row[m] / row["kfac_recall"]) if row["kfac_recall"] > 0 else None})
    out = {
        "bench": "curvature", "quick": a.quick, "machine": machine(), "seconds": time.perf_counter() - t0, "threads": a.threads,
        "peak_rss_mb": peak_rss_mb(),
        "organism": {"config": ocfg.settings(), "train_seconds": org["train_seconds"], "base": org["base"],
                     "organism": org["organism"], "memorized": org["memorized"]},
        "factors": {k: {"n_tokens": v["n_tokens"], "seconds": v["seconds"], "bytes": v["factor_bytes"],
                        "matrices": len(v["matrices"]), "sites": v["sites"],
                        "components_for_99pct": {n: s["share_components_for_99pct"] for n, s in v["per_matrix"].items()}}
                    for k, v in fits.items()},
        "sweep": {"keeps": keeps, "methods": ecfg.methods, "text_windows": windows, "base": b, "rows": ev["rows"],
                  "summary": ev["summary"], "seconds": ev["seconds"]},
        "equal_ppl_ratios": verdict,
        "true_vs_empirical_G": g_diff,
        "run_folders": {"organism": str(root / "organism"), "eval": ecfg.out,
                        **{f"fit_{k}": str(Path(v["factors"]).parent) for k, v in fits.items()}},
    }
    write_json(a.json_path, out)


if __name__ == "__main__":
    main()
