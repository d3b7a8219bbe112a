"""Our attribution graphs against circuit-tracer 0.5.0's, on the same model, transcoders and prompts.

    python bench/circuits_reference.py [--quick] --json bench/results/circuits_reference.json [--transcoders DIR]

circuit-tracer pins transformers <= 4.57.3 and huggingface-hub < 1.0 and pulls transformer-lens and nnsight, so it
lives in its own environment (`make bench-setup` makes it):

    python3 -m venv .venv-circuit-tracer && .venv-circuit-tracer/bin/pip install torch==2.13.0 \
        && .venv-circuit-tracer/bin/pip install circuit-tracer==0.5.0 nnsight==0.6.3

(nnsight 0.8, which pip picks for circuit-tracer's `nnsight>=0.6.0`, lacks `nnsight.intervention.tracing`, which
circuit-tracer 0.5.0 imports: the nnsight backend fails at import; 0.6.3 works.)

What it does:
1. exports our transcoder set (default runs/circuits-quick-tc, else a small set is trained) to circuit-tracer's
   per-layer format (`probescope.circuits.export.export_circuit_tracer`) — its `SingleLayerTranscoder` with a
   TopK(k) activation followed by ReLU, hooks `mlp.hook_in` → `mlp.hook_out` (the llama mapping:
   post_attention_layernorm output → mlp output, our `mlp_in.L` → `mlp_out.L`);
2. writes a plain HF folder of SmolLM2-135M that transformers 4.57 reads (links to probescope's dequantised cache,
   written by transformers 5: the config's `rope_parameters` also written as 4.57's `rope_theta`, the tokenizer
   class as `PreTrainedTokenizerFast`);
3. for each prompt (--quick: the first; token ids, a leading BOS so both zero position 0), builds our graph in this process and
   circuit-tracer's in a subprocess of that environment (nnsight backend, CPU, float32), same max_feature_nodes,
   batch size, logit targets settings and torch threads;
4. compares: active-feature sets, logit targets, the selected feature nodes, the adjacency over every node the two
   share and over the edges our pruning keeps (max relative difference), and seconds per graph — wall and CPU
   (process time: on a shared machine the fairer of the two; both sides run one torch thread).
If circuit-tracer cannot load the model or cannot run, the JSON records where (the traceback's last lines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_PY = REPO / ".venv-circuit-tracer" / "bin" / "python"

PROMPTS = {
    "fact": "The capital of France is Paris. The capital of Germany is",
    "induction": "The blue fox met the green owl by the river. Later the blue fox met the green",
    "greater_than": "The war lasted from the year 1732 to the year 17",
    "arithmetic": "12 + 7 = 19. 23 + 5 =",
}

# ---- the worker: runs inside .venv-circuit-tracer (no probescope import) -----------------------------------------

WORKER = r'''
import json, sys, time, traceback
args = json.loads(sys.argv[1])
out = {"ok": False, "stage": "import"}
try:
    import torch
    torch.set_num_threads(args["threads"])
    from safetensors.torch import load_file, save_file
    import circuit_tracer
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model import ReplacementModel
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    out["versions"] = {"circuit_tracer": getattr(circuit_tracer, "__version__", "?"), "torch": torch.__version__}
    import transformers, nnsight
    out["versions"].update(transformers=transformers.__version__, nnsight=getattr(nnsight, "__version__", "?"))

    class TopKReLU(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.topk = TopK(k)
        def forward(self, x):
            return torch.relu(self.topk(x))

    out["stage"] = "load transcoders"
    t = time.perf_counter()
    meta = json.load(open(args["export"] + "/export.json"))
    tcs = {}
    for layer in range(meta["n_layers"]):
        sd = load_file(f"{args['export']}/layer_{layer}.safetensors")
        m, d = sd["W_enc"].shape
        tc = SingleLayerTranscoder(d, m, TopKReLU(meta["k"]), layer, skip_connection="W_skip" in sd,
                                   device=torch.device("cpu"), dtype=torch.float32)
        tc.load_state_dict(sd)
        tcs[layer] = tc
    tset = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                         scan="probescope-export")
    out["stage"] = "load model"
    model = ReplacementModel.from_pretrained_and_transcoders(args["hf_dir"], tset, backend="nnsight",
                                                             device=torch.device("cpu"), dtype=torch.float32)
    out["load_seconds"] = time.perf_counter() - t
    out["graphs"] = {}
    for name, ids in args["prompts"].items():
        out["stage"] = f"attribute {name}"
        t, c = time.perf_counter(), time.process_time()
        g = attribute(torch.tensor(ids), model, max_n_logits=args["max_n_logits"],
                      desired_logit_prob=args["desired_logit_prob"], batch_size=args["batch_size"],
                      max_feature_nodes=args["max_feature_nodes"], verbose=False)
        sec, cpu = time.perf_counter() - t, time.process_time() - c
        save_file({"adjacency": g.adjacency_matrix.float().contiguous(),
                   "active_features": g.active_features.long().contiguous(),
                   "selected_features": g.selected_features.long().contiguous(),
                   "activation_values": g.activation_values.float().contiguous(),
                   "logit_tokens": g.logit_token_ids.long().contiguous(),
                   "logit_probabilities": g.logit_probabilities.float().contiguous(),
                   "input_tokens": g.input_tokens.long().contiguous()}, f"{args['out']}/{name}.safetensors")
        out["graphs"][name] = {"seconds": sec, "cpu_seconds": cpu}
    out["ok"] = True
    out["stage"] = "done"
except BaseException as e:
    out["error"] = f"{type(e).__name__}: {e}"[:2000]
    out["traceback_tail"] = traceback.format_exc().strip().splitlines()[-12:]
print("RESULT " + json.dumps(out))
'''


def hf_folder(out: Path) -> Path:
    """A plain HF folder of SmolLM2-135M readable by transformers 4.57 (links to probescope's cache)."""
    from probescope.core.models.registry import cache_dir

    src = cache_dir() / "models" / "smollm2-135m"
    if not (src / "model.safetensors").exists():
        raise SystemExit(f"{src} holds no cached model: load smollm2-135m once (probescope caches it)")
    out.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        dst = out / f
        if not dst.exists() and (src / f).exists():
            dst.symlink_to(src / f)
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    tcfg = json.loads((src / "tokenizer_config.json").read_text())  # transformers 5 names a class 4.57 lacks
    tcfg = {k: v for k, v in tcfg.items() if k not in ("backend", "is_local", "local_files_only")}
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    return out


def node_keys(active, selected, n_layers: int, n_pos: int, logit_tokens) -> list[tuple]:
    keys = [("f",) + tuple(int(x) for x in active[int(i)]) for i in selected]
    keys += [("e", layer, p) for layer in range(n_layers) for p in range(n_pos)]
    keys += [("t", p) for p in range(n_pos)]
    keys += [("l", int(v)) for v in logit_tokens]
    return keys


def compare(ours, theirs: dict, n_layers: int, kept_edges) -> dict:
    """Node sets and the adjacency over shared nodes (rows = targets, columns = sources)."""
    import torch

    T = int(ours.input_tokens.shape[0])
    a_keys = node_keys(ours.active_features, ours.selected_features, n_layers, T, ours.logit_tokens)
    b_keys = node_keys(theirs["active_features"], theirs["selected_features"], n_layers, T, theirs["logit_tokens"])
    act_a = {tuple(int(x) for x in r) for r in ours.active_features}
    act_b = {tuple(int(x) for x in r) for r in theirs["active_features"]}
    sel_a = {k for k in a_keys if k[0] == "f"}
    sel_b = {k for k in b_keys if k[0] == "f"}
    bi = {k: i for i, k in enumerate(b_keys)}
    common = [i for i, k in enumerate(a_keys) if k in bi]
    ia = torch.tensor(common)
    ib = torch.tensor([bi[a_keys[i]] for i in common])
    A = ours.adjacency[ia][:, ia].double()
    B = theirs["adjacency"][ib][:, ib].double()
    scale = float(A.abs().max())
    diff = (A - B).abs()
    ka = kept_edges[ia][:, ia]
    rel_kept = (diff[ka] / A[ka].abs().clamp_min(1e-30))
    big = A.abs() > 1e-3 * scale
    rel_big = diff[big] / A[big].abs()
    return {"input_tokens_equal": bool(torch.equal(ours.input_tokens.long(), theirs["input_tokens"].long())),
            "active_features": {"ours": len(act_a), "theirs": len(act_b), "identical": act_a == act_b,
                                "only_ours": len(act_a - act_b), "only_theirs": len(act_b - act_a)},
            "logit_tokens_equal": ours.logit_tokens.tolist() == theirs["logit_tokens"].tolist(),
            "logit_prob_max_abs_diff": float((ours.logit_probabilities.double()
                                              - theirs["logit_probabilities"].double()).abs().max())
            if ours.logit_tokens.tolist() == theirs["logit_tokens"].tolist() else None,
            "selected_features": {"ours": len(sel_a), "theirs": len(sel_b), "shared": len(sel_a & sel_b),
                                  "identical": sel_a == sel_b},
            "activation_max_abs_diff": _act_diff(ours, theirs),
            "shared_nodes": len(common), "nodes_ours": len(a_keys), "nodes_theirs": len(b_keys),
            "adjacency_max_abs_diff_over_max": float(diff.max()) / scale,
            "kept_edges_compared": int(ka.sum()),
            "kept_edges_max_rel_diff": float(rel_kept.max()) if rel_kept.numel() else None,
            "kept_edges_median_rel_diff": float(rel_kept.median()) if rel_kept.numel() else None,
            "edges_over_1e-3_max_rel_diff": float(rel_big.max()) if rel_big.numel() else None}


def _act_diff(ours, theirs) -> float | None:
    """Max |activation difference| over the active features both have (both graphs hold one value per active one)."""
    a = {tuple(int(x) for x in r): float(v) for r, v in zip(ours.active_features, ours.activation_values)}
    b = {tuple(int(x) for x in r): float(v) for r, v in zip(theirs["active_features"], theirs["activation_values"])}
    shared = a.keys() & b.keys()
    return max((abs(a[k] - b[k]) for k in shared), default=None)


def main() -> None:
    from _common import machine, parser, write_json

    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--transcoders", default="", help="our set (default runs/circuits-quick-tc, else trained)")
    ap.add_argument("--work", default="runs/circuits-reference", help="exported set, HF folder, graphs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-feature-nodes", type=int, default=0, help="default: 256 with --quick, else 2000")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed to circuit-tracer's subprocess")
    ap.add_argument("--prompts", default="", help="comma-separated prompt names (default: all; --quick: the first)")
    args = ap.parse_args()
    unknown = [p for p in args.prompts.split(",") if p not in PROMPTS] if args.prompts else []
    if unknown:
        raise SystemExit(f"--prompts {args.prompts}: {', '.join(unknown)} unknown; choose from {', '.join(PROMPTS)}")
    import torch

    torch.set_num_threads(args.threads)
    args.max_feature_nodes = args.max_feature_nodes or (256 if args.quick else 2000)
    from probescope import load_model
    from probescope.circuits import attribute, load_transcoders, prune
    from probescope.circuits.export import export_circuit_tracer
    from probescope.circuits.run import summarize
    from probescope.core.io import load_tensors

    work = REPO / args.work
    model, tok = load_model("smollm2-135m")
    tc_dir = Path(args.transcoders or REPO / "runs" / "circuits-quick-tc")
    res: dict = {"bench": "circuits_reference", "model": "smollm2-135m", "quick": args.quick, "machine": machine(),
                 "threads": args.threads, "max_feature_nodes": args.max_feature_nodes, "batch_size": args.batch_size}
    if not (tc_dir / "transcoders.json").exists():
        from probescope.circuits.config import TranscodersConfig
        from probescope.circuits.train import train_transcoders

        tc_dir = work / "tc"
        train_transcoders(TranscodersConfig(model="smollm2-135m", out=str(tc_dir), tokens=4096, batch_size=1024,
                                            k=16, expansion=4, eval_contexts=8, label_contexts=0, resume=False,
                                            quiet=True), model, tok)
    tcs = load_transcoders(tc_dir)
    res["transcoders"] = str(tc_dir)
    export = export_circuit_tracer(tcs, model, work / "export")
    hf = hf_folder(work / "hf-smollm2-135m")
    prompts = {p: PROMPTS[p] for p in args.prompts.split(",")} if args.prompts else \
        dict(list(PROMPTS.items())[:1]) if args.quick else PROMPTS
    bos = tok.bos_token_id
    ids = {n: [bos] + tok(p, add_special_tokens=False).input_ids for n, p in prompts.items()}
    res["prompts"] = {n: {"prompt": p, "n_tokens": len(ids[n])} for n, p in prompts.items()}
    ours = {}
    for n in prompts:
        c = time.process_time()
        g = attribute(model, tok, torch.tensor(ids[n]), tcs, max_feature_nodes=args.max_feature_nodes,
                      batch_size=args.batch_size, quiet=True)
        cpu = time.process_time() - c
        s, _ = summarize(g)
        ours[n] = g
        res["prompts"][n]["ours"] = {k: s[k] for k in ("n_active_features", "n_feature_nodes", "n_logits",
                                                       "top_logit", "top_logit_prob", "replacement", "completeness",
                                                       "seconds")}
        res["prompts"][n]["ours"]["cpu_seconds"] = cpu
    graphs = work / "ct-graphs"
    graphs.mkdir(parents=True, exist_ok=True)
    if not VENV_PY.exists():
        res["circuit_tracer"] = {"ok": False, "error": f"{VENV_PY} missing: run `make bench-setup`"}
    else:
        wargs = {"export": str(export), "hf_dir": str(hf), "out": str(graphs), "prompts": ids,
                 "threads": args.threads, "max_feature_nodes": args.max_feature_nodes, "batch_size": args.batch_size,
                 "max_n_logits": 10, "desired_logit_prob": 0.95}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        t = time.perf_counter()
        try:
            p = subprocess.run([str(VENV_PY), "-c", WORKER, json.dumps(wargs)], capture_output=True, text=True,
                               timeout=args.timeout, env=env, cwd=str(work))
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            ct = json.loads(line[-1][7:]) if line else {"ok": False, "stage": "start",
                                                         "error": f"exit {p.returncode}",
                                                         "stderr_tail": p.stderr.strip().splitlines()[-12:]}
        except subprocess.TimeoutExpired:
            ct = {"ok": False, "error": f"timed out after {args.timeout} s"}
        ct["wall_seconds"] = time.perf_counter() - t
        res["circuit_tracer"] = ct
        for n, info in ct.get("graphs", {}).items():
            theirs = load_tensors(graphs / f"{n}.safetensors")
            kept = prune(ours[n]).edge_mask
            cmp = compare(ours[n], theirs, len(tcs), kept)
            res["prompts"][n]["circuit_tracer"] = {"seconds": info["seconds"], "cpu_seconds": info["cpu_seconds"],
                                                   "n_active_features": int(theirs["active_features"].shape[0]),
                                                   "n_feature_nodes": int(theirs["selected_features"].shape[0])}
            res["prompts"][n]["comparison"] = cmp
            res["prompts"][n]["speedup"] = info["seconds"] / res["prompts"][n]["ours"]["seconds"]
            res["prompts"][n]["speedup_cpu"] = info["cpu_seconds"] / res["prompts"][n]["ours"]["cpu_seconds"]
    done = [r for r in res["prompts"].values() if "comparison" in r]
    if done:
        res["mean_seconds_ours"] = sum(r["ours"]["seconds"] for r in done) / len(done)
        res["mean_seconds_circuit_tracer"] = sum(r["circuit_tracer"]["seconds"] for r in done) / len(done)
        res["mean_cpu_seconds_ours"] = sum(r["ours"]["cpu_seconds"] for r in done) / len(done)
        res["mean_cpu_seconds_circuit_tracer"] = sum(r["circuit_tracer"]["cpu_seconds"] for r in done) / len(done)
        res["load_average_at_end"] = os.getloadavg()
        res["max_kept_edge_rel_diff"] = max(r["comparison"]["kept_edges_max_rel_diff"] or 0 for r in done)
        res["all_active_sets_identical"] = all(r["comparison"]["active_features"]["identical"] for r in done)
    write_json(args.json_path, res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("prompts", "machine")}, indent=1)[:3000])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
