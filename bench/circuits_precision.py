"""Where the kept-edge differences against circuit-tracer come from: each side's float32 graph against float64.

    python bench/circuits_precision.py --json bench/results/circuits_precision.json [--prompts fact,induction]

Run bench/circuits_reference.py first: this reuses what it left under runs/circuits-reference (the exported
transcoders, the HF folder, circuit-tracer's float32 graphs) and the same transcoder set. For each prompt it builds
- our graph in float32 (as the reference bench does) and in float64: the same code with the model, the transcoders
  and every float32 cast made float64 (`Tensor.float` / `Module.float` answer `double` in this process — a
  diagnostic, not an API);
- circuit-tracer 0.5.0's graph in float64 (its worker from bench/circuits_reference.py with dtype float64);
then, over the edges our float32 pruning keeps (the edges the ≤ 1e-4 goal speaks of): the two float64 graphs against
each other (the same method: they should agree to float64 rounding), and each float32 graph against the float64
ones (max and median relative error, and the edges above 1e-4). The side whose float32 graph is further from float64
is the inaccurate one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def float64_casts():
    """Inside, `Tensor.float()` and `Module.float()` give float64 and new tensors default to float64 (this process
    only)."""
    import torch

    orig, orig_m, dt = torch.Tensor.float, torch.nn.Module.float, torch.get_default_dtype()
    torch.Tensor.float = lambda self, *a, **k: self.double()
    torch.nn.Module.float = lambda self: self.double()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.float, torch.nn.Module.float = orig, orig_m
        torch.set_default_dtype(dt)


def circuit_tracer_float64(ids: dict, work: Path, out: Path, nodes: int, batch: int, timeout: int) -> dict:
    """circuit-tracer's graphs in float64 (its float32 worker with the dtype swapped) into `out`."""
    import circuits_reference as cr

    w = cr.WORKER.replace("dtype=torch.float32", "dtype=torch.float64").replace(
        "g.adjacency_matrix.float()", "g.adjacency_matrix.double()").replace(
        "tc.load_state_dict(sd)", "tc.load_state_dict({k: v.double() for k, v in sd.items()})")
    if w.count("float64") != 2 or "v.double()" not in w:
        raise SystemExit("circuits_reference.WORKER changed: update the float64 swap here")
    out.mkdir(parents=True, exist_ok=True)
    wargs = {"export": str(work / "export"), "hf_dir": str(work / "hf-smollm2-135m"), "out": str(out),
             "prompts": ids, "threads": 1, "max_feature_nodes": nodes, "batch_size": batch, "max_n_logits": 10,
             "desired_logit_prob": 0.95}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    p = subprocess.run([str(cr.VENV_PY), "-c", w, json.dumps(wargs)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(work))
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[-1][7:]) if line else {"ok": False, "stderr_tail": p.stderr.strip().splitlines()[-12:]}


def aligned(graph: dict, keys_ref: list, n_layers: int):
    """`graph`'s adjacency (float64) over the nodes of `keys_ref`, in that order (None where a node is missing)."""
    import torch
    from circuits_reference import node_keys

    T = int(graph["input_tokens"].shape[0])
    keys = node_keys(graph["active_features"], graph["selected_features"], n_layers, T, graph["logit_tokens"])
    at = {k: i for i, k in enumerate(keys)}
    if not all(k in at for k in keys_ref):
        return None
    idx = torch.tensor([at[k] for k in keys_ref])
    return graph["adjacency"].double()[idx][:, idx]


def rel(a, b, mask) -> dict:
    """Error of `a` against the reference `b` over `mask`: relative to each entry (max, median, how many exceed
    1e-4) and relative to the largest |entry| of its row (max: what float32 rounding of a row's sums allows)."""
    r = (a[mask] - b[mask]).abs() / b[mask].abs().clamp_min(1e-30)
    row = (a - b).abs() / b.abs().amax(1, keepdim=True).clamp_min(1e-30)
    return {"max": float(r.max()), "median": float(r.median()), "over_1e-4": int((r > 1e-4).sum()),
            "max_over_row_max": float(row[mask].max())}


def edge_parts(rm, target: tuple, source: tuple) -> tuple:
    """One edge as its two factors: the target's gradient at the source's leaf and the source's vector (float64
    copies), from a batch-1 `AttributionForward` of the replacement model `rm`. Keys as `node_keys` writes them."""
    import torch
    from probescope.circuits.replacement import AttributionForward

    fwd = AttributionForward(rm, 1)
    if target[0] == "l":
        tg = rm.targets(10, 0.95)
        out, pos, vec = fwd.final, rm.T - 1, tg.vectors[tg.tokens.tolist().index(target[1])]
    else:
        i = [tuple(int(x) for x in r) for r in rm.active].index(tuple(target[1:]))
        out, pos, vec = fwd.mlp_in[target[1]], target[2], rm.encoder_rows[i]
    g = torch.zeros_like(out)
    g[0, pos] = vec.to(g.dtype)
    if source[0] == "t":
        leaf, p, v = fwd.embed_leaf, source[1], rm.tokens[source[1]]
    elif source[0] == "e":
        leaf, p, v = fwd.out_leaves[source[1]], source[2], rm.error_nodes[source[1], source[2]]
    else:
        i = [tuple(int(x) for x in r) for r in rm.active].index(tuple(source[1:]))
        leaf, p, v = fwd.out_leaves[source[1]], source[2], rm.decoder_vecs[i]
    got, = torch.autograd.grad([out], [leaf], [g])
    return got[0, p].double(), v.double()


def decompose(model, tcs, ids: list, target: tuple, source: tuple) -> dict:
    """Where one edge's float32 error comes from: its gradient factor and its source-vector factor each in float32
    and float64, every product taken in float64, against the all-float64 value; and the cancellation in the dot
    product (|g|·|v| / |g·v|), which multiplies the factors' relative errors."""
    import torch
    from probescope.circuits import ReplacementModel, check_transcoders

    x = torch.tensor([ids])
    kw = dict(bos_token_id=ids[0])
    g32, v32 = edge_parts(ReplacementModel(model, check_transcoders(model, tcs), x, **kw), target, source)
    model.double()
    tcs64 = [tc.double() for tc in tcs]
    with float64_casts():
        g64, v64 = edge_parts(ReplacementModel(model, check_transcoders(model, tcs64), x, **kw), target, source)
    model.float()
    for tc in tcs:
        tc.float()
    truth = float(g64 @ v64)
    err = lambda a, b: abs(float(a @ b) - truth) / abs(truth)  # noqa: E731
    return {"value_float64": truth, "cancellation": float(g64.norm() * v64.norm()) / abs(truth),
            "gradient_rel_error": float((g32 - g64).norm() / g64.norm()),
            "source_vector_rel_error": float((v32 - v64).norm() / v64.norm()),
            "edge_rel_error": {"both_float32": err(g32, v32), "gradient_float32_only": err(g32, v64),
                               "source_vector_float32_only": err(g64, v32)}}


def main() -> None:
    from _common import machine, parser, write_json
    import circuits_reference as cr

    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--prompts", default="fact", help=f"comma-separated, of: {', '.join(cr.PROMPTS)}")
    ap.add_argument("--transcoders", default="runs/circuits-quick-tc")
    ap.add_argument("--work", default="runs/circuits-reference")
    ap.add_argument("--max-feature-nodes", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--timeout", type=int, default=3600)
    args = ap.parse_args()
    names = args.prompts.split(",")
    bad = [n for n in names if n not in cr.PROMPTS]
    if bad:
        raise SystemExit(f"--prompts {args.prompts}: {', '.join(bad)} unknown; choose from {', '.join(cr.PROMPTS)}")
    work = REPO / args.work
    if not (work / "ct-graphs").is_dir() or not cr.VENV_PY.exists():
        raise SystemExit(f"{work}/ct-graphs or {cr.VENV_PY} missing: run bench/circuits_reference.py first")
    import torch

    torch.set_num_threads(1)
    from probescope import load_model
    from probescope.circuits import attribute, load_transcoders, prune
    from probescope.core.io import load_tensors

    model, tok = load_model("smollm2-135m")
    tcs = load_transcoders(REPO / args.transcoders)
    L = len(tcs)
    ids = {n: [tok.bos_token_id] + tok(cr.PROMPTS[n], add_special_tokens=False).input_ids for n in names}
    res: dict = {"bench": "circuits_precision", "model": "smollm2-135m", "machine": machine(), "threads": 1,
                 "max_feature_nodes": args.max_feature_nodes, "batch_size": args.batch_size,
                 "transcoders": args.transcoders, "prompts": {}}
    kw = dict(max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, quiet=True)
    ours32 = {n: attribute(model, tok, torch.tensor(ids[n]), tcs, **kw) for n in names}
    t = time.perf_counter()
    model64 = model.double()
    tcs64 = [tc.double() for tc in tcs]
    with float64_casts():
        ours64 = {n: attribute(model64, tok, torch.tensor(ids[n]), tcs64, **kw) for n in names}
    model.float()
    for tc in tcs:
        tc.float()
    res["ours_float64_seconds"] = time.perf_counter() - t
    ct64 = circuit_tracer_float64(ids, work, work / "ct-graphs-float64", args.max_feature_nodes, args.batch_size,
                                  args.timeout)
    res["circuit_tracer_float64"] = {k: v for k, v in ct64.items() if k != "graphs"}
    for n in names:
        g = ours32[n]
        as_dict = lambda x: {"adjacency": x.adjacency, "active_features": x.active_features,  # noqa: E731
                             "selected_features": x.selected_features, "logit_tokens": x.logit_tokens,
                             "input_tokens": x.input_tokens}
        keys = cr.node_keys(g.active_features, g.selected_features, L, g.n_pos, g.logit_tokens)
        kept = prune(g).edge_mask
        o32 = g.adjacency.double()
        o64 = aligned(as_dict(ours64[n]), keys, L)
        t32 = aligned(load_tensors(work / "ct-graphs" / f"{n}.safetensors"), keys, L)
        f64 = work / "ct-graphs-float64" / f"{n}.safetensors"
        t64 = aligned(load_tensors(f64), keys, L) if f64.exists() else None
        row: dict = {"kept_edges": int(kept.sum()), "node_sets_aligned": {
            "ours_float64": o64 is not None, "circuit_tracer_float32": t32 is not None,
            "circuit_tracer_float64": t64 is not None}}
        if o64 is not None:
            row["ours_float32_vs_float64"] = rel(o32, o64, kept)
        if t32 is not None:
            row["ours_float32_vs_circuit_tracer_float32"] = rel(o32, t32, kept)
        if t64 is not None and o64 is not None:
            row["ours_float64_vs_circuit_tracer_float64"] = rel(o64, t64, kept)
            row["circuit_tracer_float32_vs_float64"] = rel(t32, t64, kept) if t32 is not None else None
            row["ours_float32_vs_circuit_tracer_float64"] = rel(o32, t64, kept)
            # the edge where the float32 graphs part most: its four values
            r = ((o32 - t32).abs() / o32.abs().clamp_min(1e-30)).masked_fill(~kept, 0)
            i, j = divmod(int(r.argmax()), r.shape[1])
            row["worst_edge"] = {"target": list(keys[i]), "source": list(keys[j]), "ours_float32": float(o32[i, j]),
                                 "circuit_tracer_float32": float(t32[i, j]), "ours_float64": float(o64[i, j]),
                                 "circuit_tracer_float64": float(t64[i, j])}
            row["worst_edge"]["parts"] = decompose(model, tcs, ids[n], keys[i], keys[j])
        res["prompts"][n] = row
    write_json(args.json_path, res)
    print(json.dumps(res["prompts"], indent=1)[:4000])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
