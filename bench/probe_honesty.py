"""Probes that hold (#35): the default-domain rule, truth under negation, and raw vs SAE probes under the regimes,
on SmolLM2-135M (layer 11), one thread.

  1. default-domain rule: `probe train --task truth` with no --domain (mixed on purpose, domain-balanced) beside
     --domain affirmative, AUROC per domain of the test split;
  2. negation: every rule of `probe negation`, AUROC with bootstrap intervals on held-out pairs of the training
     topics and on held-out topics, affirmative and negated;
  3. regimes: `probe regimes` on four tasks (truth, truth-heldout, sentiment, topic) with an SAE of the layer
     (trained by the SAE wing on the default corpus and cached, the one bench/probes.py uses), the winner per regime
     with its interval and best raw - best SAE;
  4. sandbag: `probe sandbag` (the organisms trained once and cached under the probescope cache, reused by later
     runs): the behaviour checks, the Boxo table and probes vs text monitors;
  5. sycophancy: `probe sandbag --behaviour sycophancy`, the same for organisms that agree with a user's wrong
     claim (cached beside the sandbagging ones; the honest training answers are shared).

    python bench/probe_honesty.py [--quick] [--parts domain,negation,regimes,sandbag,sycophancy] [--threads 1] --json PATH
--quick: 300 examples per domain and 150 pairs per topic (about 15 minutes on 2 busy cores); full: 600 and 300.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, parser, write_json  # noqa: E402


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("plots", "run")}


def domain_rule(model_name: str, layer: int, n: int, tmp: Path) -> dict:
    from probescope.probes.config import DataConfig, FitOptions, TrainConfig
    from probescope.probes.runner import run_train

    out = {}
    for name, domain in (("no --domain (mixed, balanced)", None), ("--domain affirmative", "affirmative")):
        cfg = TrainConfig(data=DataConfig(model=model_name, task="truth", n_per_domain=n), fit=FitOptions(),
                          layer=layer, kind="linear", domain=domain, out=str(tmp / f"train-{domain}"))
        r = run_train(cfg)
        row = {"test_auroc": r["test"]["auroc"], "weight_decay": r["fit"]["weight_decay"]}
        if "mixed_domains" in r:
            row["test_auroc_by_domain"] = {d: m["auroc"] for d, m in r["mixed_domains"]["test_by_domain"].items()}
            row["note"] = r["mixed_domains"]["note"]
        out[name] = row
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=11)
    ap.add_argument("--parts", default="domain,negation,regimes,sandbag,sycophancy", help="comma-separated parts to run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: measured fastest on a busy 2-core machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 300 if args.quick else 600
    pairs = 150 if args.quick else 300
    parts = args.parts.split(",")
    res: dict = {"model": args.model, "layer": args.layer, "quick": args.quick, "threads": args.threads,
                 "machine": machine()}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "domain" in parts:
            t = time.perf_counter()
            res["default_domain_rule"] = domain_rule(args.model, args.layer, n, tmp)
            res["default_domain_rule"]["seconds"] = round(time.perf_counter() - t, 1)
        if "negation" in parts:
            from probescope.probes.config import NegationConfig
            from probescope.probes.negation import run_negation

            t = time.perf_counter()
            r = run_negation(NegationConfig(model=args.model, layer=args.layer, n_pairs=pairs, n_heldout=60,
                                            threads=args.threads, out=str(tmp / "negation")))
            res["negation"] = {**_strip(r), "seconds": round(time.perf_counter() - t, 1)}
        if "regimes" in parts:
            from probes import bench_sae  # the SAE bench/probes.py trains and caches (same layer, same recipe)
            from probescope import load_model
            from probescope.probes.config import RegimesConfig
            from probescope.probes.regimes import run_regimes

            model, tok = load_model(args.model)
            _, res["sae"] = bench_sae(model, tok, args.layer, quick=True)
            del model
            t = time.perf_counter()
            sizes = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
            r = run_regimes(RegimesConfig(model=args.model, layer=args.layer, n_per_domain=n, sizes=sizes,
                                          sae=res["sae"]["folder"], threads=args.threads, out=str(tmp / "regimes")))
            res["regimes"] = {**_strip(r), "seconds": round(time.perf_counter() - t, 1)}
        for behaviour, part in (("sandbagging", "sandbag"), ("sycophancy", "sycophancy")):
            if part not in parts:
                continue
            from probescope.core.models import cache_dir
            from probescope.probes.config import SandbagConfig
            from probescope.probes.sandbag import run_sandbag

            t = time.perf_counter()
            org = cache_dir() / "bench" / f"sandbag_organisms_{args.model.replace('/', '_')}"
            r = run_sandbag(SandbagConfig(model=args.model, layer=args.layer, threads=args.threads, behaviour=behaviour,
                                          organism_dir=str(org), **({"n": 60, "n_off": 30} if args.quick else {}),
                                          out=str(tmp / part)))
            res[part] = {**_strip(r), "seconds": round(time.perf_counter() - t, 1)}
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write_json(args.json_path, res)


if __name__ == "__main__":
    main()
