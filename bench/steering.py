"""Steering benchmark: apply overhead on generation, and probescope vs the steering-vectors library.

    python bench/steering.py [--quick] --json bench/results/steering.json

On smollm2-135m, layer 10, 32 generated sentiment pairs, torch on 1 thread (the machine is shared):
* apply overhead: greedy generation of 4 prompts x 16 new tokens, plain vs with a vector applied (positions
  "all" and "generated"), runs interleaved round by round, median seconds; overhead = median ratio − 1.
* vs steering-vectors (`pip install --no-deps steering-vectors`): the same mean-difference vector from the same
  pairs and layer (cosine), time to train at batch 1 and 8, and generation time with each library's vector applied.
* without --quick: also the steering vs few-shot vs LoRA comparison table (probescope.steering.compare).
"""

from __future__ import annotations

import statistics
import time

from _common import machine, parser, write_json

LAYER, N_PAIRS, N_PROMPTS, NEW_TOKENS = 10, 32, 4, 16


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import torch

    torch.set_num_threads(1)
    import probescope as ps
    from probescope.steering import SteeringVector
    from probescope.steering.evaluate import generate
    from probescope.steering.pairs import eval_prompts, sentiment_pairs

    model, tok = ps.load_model("smollm2-135m")
    pairs = sentiment_pairs(tok, N_PAIRS)
    prompts = eval_prompts(tok, N_PROMPTS)
    out: dict = {"machine": machine(), "model": "smollm2-135m", "layer": LAYER, "n_pairs": N_PAIRS,
                 "quick": args.quick, "torch_threads": 1}

    # --- probescope vs steering-vectors: training --------------------------------------------------------------
    try:
        import steering_vectors as sv_lib
        from steering_vectors import train_steering_vector

        out["steering_vectors_version"] = getattr(sv_lib, "__version__", None) or _version("steering-vectors")
    except Exception as e:  # not installed, or broken against this transformers
        sv_lib, out["steering_vectors_error"] = None, f"{type(e).__name__}: {e}"
    rounds = 1 if args.quick else 3
    times: dict[str, list[float]] = {k: [] for k in ("ours_b1", "ours_b8", "theirs_b1", "theirs_b8")}
    vecs = {}
    SteeringVector.train(model, tok, pairs[:2], [LAYER])  # warm-up
    for _ in range(rounds):
        for bs in (1, 8):
            t = time.perf_counter()
            vecs[f"ours_b{bs}"] = SteeringVector.train(model, tok, pairs, [LAYER], batch_size=bs)
            times[f"ours_b{bs}"].append(time.perf_counter() - t)
            if sv_lib is not None:
                t = time.perf_counter()
                vecs[f"theirs_b{bs}"] = train_steering_vector(model, tok, pairs, layers=[LAYER], batch_size=bs)
                times[f"theirs_b{bs}"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    out["train_seconds"] = med
    if sv_lib is not None:
        ours = vecs["ours_b8"]
        out["cosine_vs_steering_vectors"] = min(
            ours.cosine(vecs["theirs_b8"].layer_activations[LAYER]),
            vecs["ours_b1"].cosine(vecs["theirs_b1"].layer_activations[LAYER]))
        out["norm_ratio_vs_steering_vectors"] = float(
            ours.directions[LAYER].norm() / vecs["theirs_b8"].layer_activations[LAYER].norm())
        out["train_time_ratio_b1"] = med["ours_b1"] / med["theirs_b1"]  # < 1: probescope is faster
        out["train_time_ratio_b8"] = med["ours_b8"] / med["theirs_b8"]

    # --- apply overhead on generation ----------------------------------------------------------------------------
    vec = vecs["ours_b8"]
    gen = lambda: generate(model, tok, prompts, NEW_TOKENS)  # noqa: E731

    def with_ours(positions):
        def run():
            with vec.apply(model, multiplier=1.0, positions=positions):
                gen()
        return run

    runners = {"plain": gen, "ours_all": with_ours("all")}
    if not args.quick:
        runners["ours_generated"] = with_ours("generated")
    if sv_lib is not None:
        theirs = vecs["theirs_b8"]

        def run_theirs():
            with theirs.apply(model, multiplier=1.0):
                gen()
        runners["theirs"] = run_theirs
    for fn in runners.values():  # warm-up
        fn()
    n_rounds = 4 if args.quick else 11
    gt: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(n_rounds):
        order = list(runners) if i % 2 == 0 else list(runners)[::-1]  # interleaved, alternating order
        for k in order:
            gt[k].append(timed(runners[k]))
    gmed = {k: statistics.median(v) for k, v in gt.items()}
    paired = lambda k: statistics.median(a / b for a, b in zip(gt[k], gt["plain"]))  # noqa: E731
    out["generate_seconds"] = gmed
    # Headline: ratio of the medians of interleaved runs. The paired per-round ratio is noisier on a shared CPU.
    out["apply_overhead"] = gmed["ours_all"] / gmed["plain"] - 1
    out["apply_overhead_paired_median"] = paired("ours_all") - 1
    if "ours_generated" in gt:
        out["apply_overhead_generated_only"] = gmed["ours_generated"] / gmed["plain"] - 1
    out["hook_cost_fraction"] = _hook_cost(vec, model, gmed["plain"] / (NEW_TOKENS * 1.0))
    if "theirs" in gt:
        out["apply_overhead_steering_vectors"] = paired("theirs") - 1
        out["apply_time_ratio_vs_steering_vectors"] = gmed["ours_all"] / gmed["theirs"]
    out["generate_rounds"] = n_rounds
    out["checks"] = {"apply_overhead_le_2pct": out["apply_overhead"] <= 0.02,
                     "cosine_ge_0.99": out.get("cosine_vs_steering_vectors", 0) >= 0.99}

    # --- steering vs few-shot vs LoRA (full run only: it trains a LoRA) ------------------------------------------
    if not args.quick:
        from probescope.steering.compare import CompareConfig, run_comparison, table_markdown

        res = run_comparison(CompareConfig(out="runs/steer-compare-bench"), model=model, tokenizer=tok)
        out["comparison"] = {k: {m: v for m, v in r.items() if m != "samples"} for k, r in res["rows"].items()}
        out["comparison_table"] = table_markdown(res["rows"])
    write_json(args.json_path, out)


def _hook_cost(vec, model, seconds_per_step: float) -> float:
    """Deterministic check: time of the steering edit on one decode step's hidden state [4, 1, d], as a fraction
    of a plain generation step (the noisy end-to-end figure above is bounded by contention, this is not)."""
    import torch

    from probescope.steering.apply import PositionTracker, steer_edit

    fn = steer_edit(LAYER, vec.directions[LAYER], 1.0, "add", "all", PositionTracker(LAYER))
    h = torch.randn(N_PROMPTS, 1, vec.d_model)
    for _ in range(50):
        fn(h)
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        fn(h)
    return (time.perf_counter() - t) / n / seconds_per_step


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    main()
