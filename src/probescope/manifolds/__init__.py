"""Concept manifolds: find the shape a concept variable takes per layer (circle, curve), move along it, see it.

    from probescope.manifolds import FindConfig, run_find, make, fit_circle
    run_find(FindConfig(model="smollm2-135m", concept="days", out="runs/days"))
"""

from .clusters import (average_clusters, cluster_report, cofire_directions, graph_clusters, sibling_clusters, mixture_index, separability_index,
                       spectral_clusters)
from .concepts import CONCEPTS, ConceptData, Example, load_concept, make, read_concept
from .config import ClustersConfig, FindConfig, LineBreakConfig, MoveConfig, TransformConfig
from .flow import layer_flow, layer_step, principal_angles
from .geometry import Circle, Curve, fit_circle, fit_curve, layer_report, scores, value_means
from .move import circle_edit, subspace_edit
from .run import run_find, run_linebreak, run_move, run_transform
from .sae_clusters import run_clusters

__all__ = ["average_clusters", "cofire_directions", "CONCEPTS", "Circle", "ClustersConfig", "ConceptData", "Curve", "Example", "FindConfig", "LineBreakConfig", "MoveConfig", "TransformConfig", "circle_edit",
           "cluster_report", "fit_circle", "fit_curve", "graph_clusters", "sibling_clusters", "layer_flow", "layer_report", "layer_step", "load_concept", "make",
           "mixture_index", "principal_angles", "read_concept", "run_clusters", "run_find", "run_linebreak", "run_move", "run_transform", "scores", "separability_index",
           "spectral_clusters", "subspace_edit", "value_means"]
