"""Circuit tracing: transcoders for every layer, the local replacement model of a prompt, its attribution graph
(adjacency, pruning, replacement and completeness scores), saved in circuit-tracer's graph schema.

    from probescope.circuits import attribute, prune, scores
    graph = attribute(model, tokenizer, "The capital of France is", "runs/tc")
    check_edges(model, graph, "runs/tc", n=20)   # zero the top features: predicted vs measured logit changes
"""

from .attribution import attribute
from .graph import Graph, influence, node_influence, normalize_matrix, prune, scores
from .intervene import Intervener, Intervention, check_edges, intervene
from .replacement import ReplacementModel, salient_logits
from .transcoders import check_transcoders, load_transcoders, save_transcoders

__all__ = ["Graph", "Intervener", "Intervention", "ReplacementModel", "attribute", "check_edges", "check_transcoders",
           "influence", "intervene", "load_transcoders", "node_influence", "normalize_matrix", "prune", "salient_logits",
           "save_transcoders", "scores"]
