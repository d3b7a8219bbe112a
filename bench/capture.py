"""Capture benchmark: probescope's early-stopping hook vs a full HF forward, nnsight and TransformerLens.

    python bench/capture.py [--quick] --json bench/results/capture.json

On smollm2-135m, a batch of 8 × 128 tokens, layer 10 of 30: median seconds of several runs, timed in
one process with the methods interleaved round by round; peak RSS of each method in its own fresh
subprocess (model load included); store write and shuffled-read throughput.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, parser, peak_rss_mb, reset_peak_rss, write_json

LAYER, BATCH, SEQ = 10, 8, 128


def batch_ids(tok):
    from probescope.core.data import default_corpus
    from probescope.core.store import make_contexts

    return make_contexts(tok, default_corpus(), SEQ, BATCH)


def make_runner(method: str, model, tok):
    """A zero-argument callable returning the layer-10 activations [B, T, D] by `method`."""
    import torch

    import probescope as ps

    ids = batch_ids(tok)
    if method == "full_hf":
        def run():
            with torch.no_grad():
                return model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[LAYER + 1]
        return run
    if method == "probescope":
        return lambda: ps.capture(model, ids, layers=[LAYER]).acts[LAYER]
    if method == "nnsight":
        from nnsight import LanguageModel

        lm = LanguageModel(model, tokenizer=tok)

        def run():
            with torch.no_grad():
                with lm.trace(ids) as tracer:
                    out = lm.model.layers[LAYER].output.save()
                    tracer.stop()
            return out[0] if isinstance(out, tuple) else out
        return run
    if method == "transformer_lens":
        from transformer_lens.model_bridge import TransformerBridge

        from probescope.core.models import cache_dir

        bridge = TransformerBridge.boot_transformers(str(cache_dir() / "models" / "smollm2-135m"), tokenizer=tok, device="cpu")
        name = f"blocks.{LAYER}.hook_out"

        def run():
            with torch.no_grad():
                _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == name, stop_at_layer=LAYER + 1)
            return cache[name]
        return run
    raise ValueError(method)


def worker(method: str) -> None:
    """Fresh process: load, run once, print time-free facts (peak RSS, numerics vs HF)."""
    import torch

    import probescope as ps

    model, tok = ps.load_model("smollm2-135m")
    out: dict = {"method": method}
    try:
        run = make_runner(method, model, tok)
        gc.collect()
        reset_peak_rss()  # the peak of loading is the same for every method: measure the run itself
        act = run()
        out["peak_rss_mb"] = peak_rss_mb()
        ids = batch_ids(tok)
        with torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[LAYER + 1]
        out["max_abs_diff_vs_hf"] = float((act.float() - ref).abs().max())
    except Exception as e:  # a peer that cannot load the model: record why
        out["error"] = f"{type(e).__name__}: {e}"[:500]
    print("WORKER_JSON " + json.dumps(out))


def run_worker(method: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", method, "--json", "-"], capture_output=True, text=True, timeout=600)
    for line in r.stdout.splitlines():
        if line.startswith("WORKER_JSON "):
            return json.loads(line[len("WORKER_JSON "):])
    return {"method": method, "error": (r.stderr or r.stdout)[-500:]}


def store_throughput(model, tok, quick: bool) -> dict:
    from probescope.core.data import default_corpus
    from probescope.core.store import build_store

    n_ctx = 32 if quick else 128
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        store = build_store(model, tok, default_corpus(), [LAYER], Path(d) / "s", context_len=SEQ,
                            max_tokens=n_ctx * SEQ, shard_contexts=16, quiet=True)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        n = sum(b.shape[0] for b in store.batches(LAYER, 4096, seed=0, shuffle_buffer=8192, loop=False, drop_last=False))
        read_s = time.perf_counter() - t
        n_tokens = store.n_tokens
    return {"store_tokens": n_tokens, "store_write_tokens_per_s": n_tokens / write_s,
            "store_read_tokens_per_s": n / read_s, "store_read_batch": 4096,
            "note": "write includes the model forward (capture); read is shuffled float32 batches"}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", default=None, help=None)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)
    import probescope as ps

    repeats = 5 if args.quick else 15
    model, tok = ps.load_model("smollm2-135m")
    methods = ["full_hf", "probescope", "nnsight", "transformer_lens"]
    runners, errors = {}, {}
    for m in methods:
        try:
            runners[m] = make_runner(m, model, tok)
            runners[m]()  # warm-up
        except Exception as e:
            errors[m] = f"{type(e).__name__}: {e}"[:500]
    times: dict[str, list[float]] = {m: [] for m in runners}
    for _ in range(repeats):  # interleaved rounds: drift from other load on the machine hits every method
        for m, run in runners.items():
            t = time.perf_counter()
            run()
            times[m].append(time.perf_counter() - t)
    med = {m: statistics.median(v) for m, v in times.items()}
    mem = {m: run_worker(m) for m in methods}
    full, ours = med["full_hf"], med["probescope"]
    result = {
        "model": "smollm2-135m", "layer": LAYER, "n_layers": 30, "batch": [BATCH, SEQ], "repeats": repeats,
        "full_forward_s": full, "capture_s": ours, "ratio": ours / full,
        "peak_rss_mb": {m: mem[m].get("peak_rss_mb") for m in methods},
        "max_abs_diff_vs_hf": {m: mem[m].get("max_abs_diff_vs_hf") for m in methods},
        "peers": {},
        "machine": machine(),
    }
    for peer in ("nnsight", "transformer_lens"):
        if peer in med:
            result["peers"][peer] = {"capture_s": med[peer], "ratio_to_full": med[peer] / full,
                                     "ratio_to_probescope": med[peer] / ours,
                                     "peak_rss_mb": mem[peer].get("peak_rss_mb"),
                                     "max_abs_diff_vs_hf": mem[peer].get("max_abs_diff_vs_hf")}
        else:
            result["peers"][peer] = {"error": errors.get(peer) or mem[peer].get("error")}
    result.update(store_throughput(model, tok, args.quick))
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
