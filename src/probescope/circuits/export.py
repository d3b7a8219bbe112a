"""Save and load graphs: the full graph (safetensors + JSON) and circuit-tracer's / Neuronpedia's graph JSON.

The JSON follows circuit-tracer's `frontend/graph_models.py` (so its local viewer and Neuronpedia open it):
`metadata` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold), `qParams`, `nodes` (node_id,
feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx, reverse_ctx_idx, jsNodeId, clerp,
influence, activation; a labelled feature also `top_contexts`, a list of strings) and `links` (source, target,
weight) of the pruned graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from .graph import Graph, Pruned, prune

TENSORS = "graph.safetensors"
META = "graph_meta.json"
NODE_KEYS = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "token_prob": float,
             "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int, "jsNodeId": str, "clerp": str}
ACTIVATIONS = {"topk": "TopK(k) then ReLU", "relu": "ReLU", "jumprelu": "JumpReLU"}
FEATURE_TYPES = ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")


def save_graph(graph: Graph, folder: str | Path) -> Path:
    """Write the unpruned graph: tensors to graph.safetensors, the rest to graph_meta.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = {k: getattr(graph, k).contiguous() for k in ("input_tokens", "active_features", "activation_values",
                                                     "selected_features", "logit_tokens", "logit_probabilities",
                                                     "adjacency")}
    save_tensors(folder / TENSORS, t, finite=True)
    atomic_write_json(folder / META, {"prompt": graph.prompt, "n_layers": graph.n_layers,
                                      "token_strings": graph.token_strings, "logit_strings": graph.logit_strings,
                                      "model": graph.model, "transcoders": graph.transcoders,
                                      "seconds": graph.seconds})
    return folder


def load_graph(folder: str | Path) -> Graph:
    """The graph `save_graph` wrote."""
    folder = Path(folder)
    if not (folder / TENSORS).exists() or not (folder / META).exists():
        raise ValueError(f"{folder} holds no saved graph ({TENSORS} + {META}): run `probescope circuit attribute`")
    t = load_tensors(folder / TENSORS)
    meta = read_json(folder / META)
    return Graph(adjacency=t["adjacency"], input_tokens=t["input_tokens"], active_features=t["active_features"],
                 activation_values=t["activation_values"], selected_features=t["selected_features"],
                 logit_tokens=t["logit_tokens"], logit_probabilities=t["logit_probabilities"], **meta)


def _token(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _node(graph: Graph, i: int, influence: float, labels: dict | None = None) -> dict[str, Any]:
    n = graph.node(i)
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
            "influence": influence, "activation": None}
    if n["kind"] == "feature":
        layer, pos, f = n["layer"], n["pos"], n["feature"]
        lab = (labels or {}).get(layer, {}).get(f)
        extra = {"clerp": lab["label"], "top_contexts": lab["contexts"]} if lab else {}
        return {**base, "node_id": f"{layer}_{f}_{pos}", "feature": f, "layer": str(layer), "ctx_idx": pos,
                "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{f}-0", "activation": n["activation"],
                **extra}
    if n["kind"] == "error":
        layer, pos = n["layer"], n["pos"]
        return {**base, "node_id": f"0_{layer}_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_{pos}-0"}
    if n["kind"] == "token":
        pos, v = n["pos"], n["token"]
        return {**base, "node_id": f"E_{v}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                "feature_type": "embedding", "jsNodeId": f"E_{v}-{pos}"}
    j = i - graph.token_slice.stop
    layer, pos, v, p = str(graph.n_layers + 1), n["pos"], n["token"], n["prob"]
    text = _token(graph.logit_strings[j]) if j < len(graph.logit_strings) else str(v)
    return {**base, "node_id": f"{layer}_{v}_{pos}", "feature": v, "layer": layer, "ctx_idx": pos,
            "feature_type": "logit", "token_prob": p, "is_target_logit": j == 0, "jsNodeId": f"L_{v}-{pos}",
            "clerp": f'Output "{text}" (p={p:.3f})'}


def to_graph_json(graph: Graph, slug: str = "graph", scan: str = "", node_threshold: float = 0.8,
                  edge_threshold: float = 0.98, pruned: Pruned | None = None,
                  labels: dict[int, dict[int, dict]] | None = None) -> dict[str, Any]:
    """The pruned graph in circuit-tracer's / Neuronpedia's JSON schema. `labels` ({layer: {feature: {"label",
    "contexts"}}}, `circuits.labels.feature_labels`) fill a feature node's `clerp` and add its `top_contexts`."""
    p = pruned if pruned is not None else prune(graph, node_threshold, edge_threshold)
    keep = p.node_mask.nonzero().flatten().tolist()
    nodes = {i: _node(graph, i, float(p.cumulative[i]), labels) for i in keep}
    dst, src = p.edge_mask.nonzero(as_tuple=True)
    links = [{"source": nodes[s]["node_id"], "target": nodes[d]["node_id"], "weight": float(graph.adjacency[d, s])}
             for d, s in zip(dst.tolist(), src.tolist()) if s in nodes and d in nodes]
    used = {x["source"] for x in links} | {x["target"] for x in links}
    node_list = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    meta = {"slug": slug, "scan": scan or graph.model or "probescope", "transcoder_list": [],
            "prompt_tokens": [_token(t) for t in graph.token_strings], "prompt": graph.prompt,
            "node_threshold": node_threshold}
    return {"metadata": meta, "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                                          "sg_pos": ""}, "nodes": node_list, "links": links}


def check_graph_json(data: Any, where: str = "graph.json") -> dict[str, Any]:
    """Check `data` against the schema (types of every node field, links between known nodes); return it."""
    if not isinstance(data, dict) or not {"metadata", "qParams", "nodes", "links"} <= set(data):
        raise ValueError(f"{where} is not a graph file: it needs metadata, qParams, nodes and links")
    for k in ("slug", "scan", "prompt"):
        if not isinstance(data["metadata"].get(k), str):
            raise ValueError(f"{where}: metadata.{k} must be a string")
    if not isinstance(data["metadata"].get("prompt_tokens"), list):
        raise ValueError(f"{where}: metadata.prompt_tokens must be a list of strings")
    ids = set()
    for n in data["nodes"]:
        for k, typ in NODE_KEYS.items():
            v = n.get(k)
            ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool)) or (typ is float and isinstance(v, int))
            if not ok:
                raise ValueError(f"{where}: node {n.get('node_id')!r} field {k}={v!r} is not a {typ.__name__}")
        if n["feature_type"] not in FEATURE_TYPES:
            raise ValueError(f"{where}: node {n['node_id']!r} has feature_type {n['feature_type']!r}")
        ids.add(n["node_id"])
    for e in data["links"]:
        if e.get("source") not in ids or e.get("target") not in ids or not isinstance(e.get("weight"), float):
            raise ValueError(f"{where}: link {e} does not join two nodes of the file with a float weight")
    return data


def read_graph_json(path: str | Path) -> dict[str, Any]:
    """A graph JSON file (ours or circuit-tracer's), checked against the schema."""
    return check_graph_json(read_json(path), str(path))


def export_circuit_tracer(transcoders: Any, model: Any, folder: str | Path) -> Path:
    """A transcoder set in circuit-tracer's per-layer layout: `layer_L.safetensors` with W_enc [features, d], W_dec
    [features, d], b_enc, b_dec (float32, input normalisation folded in; W_skip where a transcoder has one; for
    JumpReLU transcoders `activation_function.threshold`, as circuit-tracer's `to_safetensors` writes it) and
    `export.json` (activation, k, hooks, model). circuit-tracer's `SingleLayerTranscoder` reads TopK sets with the
    activation TopK(k) then ReLU (ours keeps the k largest pre-activations, clamped at 0), ReLU and JumpReLU sets
    as its `load_relu_transcoder` does, and hooks `mlp.hook_in` → `mlp.hook_out` (= our `mlp_in.L` → `mlp_out.L`).
    `circuits.formats.load_circuit_tracer` reads it back. Checked against `model` first (widths, a missing layer,
    finite weights)."""
    from .transcoders import check_transcoders, load_transcoders

    if isinstance(transcoders, (str, Path)):
        transcoders = load_transcoders(transcoders)
    tcs = check_transcoders(model, transcoders)
    archs = sorted({t.cfg.arch for t in tcs})
    if len(archs) != 1 or archs[0] not in ACTIVATIONS:
        raise ValueError(f"export_circuit_tracer: arch={','.join(archs)}: only sets of one of "
                         f"{', '.join(ACTIVATIONS)} transcoders are exported")
    arch = archs[0]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for layer, tc in enumerate(tcs):
        sd = {"W_enc": tc.W_enc, "W_dec": tc.W_dec, "b_enc": tc._encoder_bias(), "b_dec": tc.b_dec}
        if arch == "jumprelu":
            sd["activation_function.threshold"] = tc.log_threshold.exp()
        if getattr(tc, "W_skip", None) is not None:
            sd["W_skip"] = tc.W_skip
        save_tensors(folder / f"layer_{layer}.safetensors", {n: v.detach().float().contiguous() for n, v in sd.items()},
                     finite=True)
    atomic_write_json(folder / "export.json", {"format": "circuit-tracer SingleLayerTranscoder", "n_layers": len(tcs),
                                               "k": tcs[0].cfg.k, "activation": ACTIVATIONS[arch],
                                               "model": tcs[0].cfg.model or "",
                                               "feature_input_hook": "mlp.hook_in",
                                               "feature_output_hook": "mlp.hook_out"})
    return folder
