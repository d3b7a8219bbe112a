"""Circuit tracing: transcoders for every layer, the local replacement model of a prompt, its attribution graph
(adjacency, pruning, replacement and completeness scores), saved in circuit-tracer's graph schema.

    from probescope.circuits import attribute, prune, scores
    graph = attribute(model, tokenizer, "The capital of France is", "runs/tc")
"""

from .attribution import attribute
from .graph import Graph, influence, node_influence, normalize_matrix, prune, scores
from .replacement import ReplacementModel, salient_logits
from .transcoders import check_transcoders, load_transcoders, save_transcoders

__all__ = ["Graph", "ReplacementModel", "attribute", "check_transcoders", "influence", "load_transcoders",
           "node_influence", "normalize_matrix", "prune", "salient_logits", "save_transcoders", "scores"]
