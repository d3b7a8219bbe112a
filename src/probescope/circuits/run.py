"""The circuits wing's jobs: `run_circuit_attribute` (a graph into a run folder) and `run_circuit_transcoders`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..report.job import open_job
from .config import AttributeConfig, InterveneConfig, LabelsConfig, TranscodersConfig


def summarize(graph: Any, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> tuple[dict, Any]:
    """Scores unpruned and pruned, sizes, the top logit and seconds; and the pruning."""
    from .graph import prune, pruned_adjacency, scores

    p = prune(graph, node_threshold, edge_threshold)
    full = scores(graph)
    pr = scores(graph, pruned_adjacency(graph, p))
    nf = graph.n_features
    kept_feat = int(p.node_mask[:nf].sum())
    return {"model": graph.model, "prompt": graph.prompt, "n_tokens": graph.n_pos,
            "n_active_features": int(graph.active_features.shape[0]), "n_feature_nodes": nf,
            "n_logits": graph.n_logits, "top_logit": graph.logit_strings[0] if graph.logit_strings else "",
            "top_logit_prob": float(graph.logit_probabilities[0]),
            "replacement": full["replacement"], "completeness": full["completeness"],
            "pruned_replacement": pr["replacement"], "pruned_completeness": pr["completeness"],
            "pruned_nodes": int(p.node_mask.sum()), "pruned_feature_nodes": kept_feat,
            "pruned_edges": int(p.edge_mask.sum()), "seconds": graph.seconds}, p


def run_circuit_attribute(cfg: AttributeConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Build, prune and score the graph; write graph.json (circuit-tracer schema), the full graph and the page."""
    from ..core.io import atomic_write_json
    from . import report as _report  # noqa: F401  (registers the page section)
    from .attribution import attribute
    from .export import save_graph, to_graph_json
    from .labels import feature_labels
    from .transcoders import load_transcoders

    tcs = load_transcoders(cfg.transcoders, cfg.transcoder_format)  # checked before anything is written
    name = None if model is not None else _model_of(cfg.transcoders, cfg.model, tcs)
    with open_job(cfg, "circuit-graph", model, tokenizer, name=name) as job:
        model, tokenizer = job.model, job.tokenizer
        graph = attribute(model, tokenizer, cfg.prompt, tcs, max_feature_nodes=cfg.max_feature_nodes,
                          max_n_logits=cfg.max_n_logits, desired_logit_prob=cfg.desired_logit_prob,
                          batch_size=cfg.batch_size, zero_bos=cfg.zero_bos, bos_error=cfg.bos_error, max_tokens=cfg.max_tokens,
                          quiet=cfg.quiet)
        graph.transcoders = cfg.transcoders
        summary, pruned = summarize(graph, cfg.node_threshold, cfg.edge_threshold)
        run = job.run
        run.write_config(cfg)
        save_graph(graph, run.path)
        slug = Path(cfg.out).name or "graph"
        atomic_write_json(run.path / "graph.json", to_graph_json(graph, slug, graph.model, cfg.node_threshold,
                                                                 cfg.edge_threshold, pruned,
                                                                 labels=feature_labels(cfg.transcoders)))
        run.write_metrics(summary, report=False)
    return {"run_dir": str(run.path), **summary}


def run_circuit_transcoders(cfg: TranscodersConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train (or resume) the set in `cfg.out`; per-layer figures and the replacement model's agreement and KL."""
    from .train import train_transcoders

    return train_transcoders(cfg, model, tokenizer)  # the job block (threads, model, corpus) is its own


def _model_of(transcoders: str, model: str | None, tcs: list) -> str:
    """The model to load: --model, else the one the set's manifest (or its first transcoder) names."""
    from ..core.io import read_json
    from .transcoders import MANIFEST

    name = model
    man = Path(transcoders) / MANIFEST
    if not name and man.exists():
        name = read_json(man).get("model") or None
    name = name or tcs[0].cfg.model
    if not name:
        raise ValueError(f"the transcoders in {transcoders} name no model: pass --model")
    return name


def run_circuit_labels(cfg: LabelsConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Label every layer's latents of a set by their top contexts (layer_L/latents.json)."""
    from .labels import label_contexts, label_transcoders
    from .transcoders import check_transcoders, load_transcoders

    tcs = load_transcoders(cfg.transcoders)
    name = None if model is not None else _model_of(cfg.transcoders, cfg.model, tcs)
    with open_job(cfg, None, model, tokenizer, name=name) as job:
        model, tokenizer = job.model, job.tokenizer
        check_transcoders(model, tcs, cfg.transcoders)  # another model's set is refused before anything is written
        ids = label_contexts(tokenizer, job.texts(), cfg.contexts, cfg.context_len)
        s = label_transcoders(model, tokenizer, tcs, cfg.transcoders, ids, top_n=cfg.top_n, quiet=cfg.quiet)
    from .labels import feature_labels

    labels = feature_labels(cfg.transcoders)
    examples = {f"L{layer}/{f}": labels[layer][f]["label"] for layer in (0, len(tcs) // 2, len(tcs) - 1)
                for f in sorted(labels.get(layer, {}), key=lambda j: -len(labels[layer][j]["contexts"]))[:2]}
    return {"transcoders": cfg.transcoders, "n_layers": len(tcs), "contexts": s["contexts"],
            "fired_per_layer": s["fired"], "n_latents": tcs[0].n_latents, "examples": examples}


def _top(logits: Any, tokenizer: Any, k: int) -> list[dict]:
    import torch

    p = torch.softmax(logits.float(), -1)
    v, i = p.topk(k)
    return [{"token": tokenizer.decode([int(t)]) if tokenizer is not None else str(int(t)), "id": int(t),
             "prob": float(q)} for q, t in zip(v, i)]


def run_circuit_intervene(cfg: InterveneConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Load the graph run; apply `cfg.feature` in every setting; check the top edges; write metrics.json."""
    from ..core.io import read_json
    from . import report as _report  # noqa: F401  (registers the page section)
    from .export import load_graph
    from .intervene import Intervener, check_edges, parse_intervention
    from .transcoders import check_transcoders, load_transcoders

    gdir = Path(cfg.graph)
    graph = load_graph(gdir)  # a clear error if the folder holds no graph
    gcfg = read_json(gdir / "config.json") if (gdir / "config.json").exists() else {}
    tc_dir = cfg.transcoders or gcfg.get("transcoders") or graph.transcoders
    if not tc_dir:
        raise ValueError(f"{gdir} names no transcoders: pass --transcoders DIR")
    zero_bos = bool(gcfg.get("zero_bos", True))
    items = [parse_intervention(f) for f in cfg.feature]
    name = None if model is not None else cfg.model or gcfg.get("model") or graph.model
    if model is None and not name:
        raise ValueError(f"{gdir} names no model: pass --model")
    with open_job(cfg, "circuit-intervene", model, tokenizer, name=name) as job:
        tcs = load_transcoders(tc_dir)  # a bad set is refused before the model loads
        model, tokenizer = job.model, job.tokenizer
        tcs = check_transcoders(model, tcs, str(tc_dir))
        bos = getattr(tokenizer, "bos_token_id", None)
        iv = Intervener(model, tcs, graph.input_tokens[None], zero_bos, bos)
        res: dict[str, Any] = {"graph": str(gdir), "prompt": graph.prompt, "transcoders": str(tc_dir),
                               "modes": list(cfg.modes)}
        if items:
            iv.run(items, cfg.modes[0])  # bad layer / position / feature refused before anything is written
        run = job.run
        run.write_config(cfg)
        if items:
            res["interventions"] = [asdict(it) for it in items]
            res["effects"] = {}
            for m in cfg.modes:
                r = iv.run(items, m)
                tok = int(graph.logit_tokens[0])
                res["effects"][m] = {"top_logit_change": float(r.demeaned_change()[tok]),
                                     "before": _top(r.clean_logits, tokenizer, cfg.top),
                                     "after": _top(r.logits, tokenizer, cfg.top)}
        if cfg.check_edges:
            res["edge_check"] = check_edges(model, graph, tcs, cfg.check_edges, cfg.modes, zero_bos, bos, iv)
        run.write_metrics(res)
    return {"run_dir": str(run.path), **res}
