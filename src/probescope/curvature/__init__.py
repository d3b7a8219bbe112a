"""Loss-curvature (K-FAC) edits that remove memorizing weights: factors, eigenbases, edits, baselines, evaluation.

    from probescope.curvature import collect_factors, make_edit, mlp_matrices
    mats = mlp_matrices(model, "22-29", "up,gate,down")
    f = collect_factors(model, tok, texts, mats)          # A = E[a aᵀ], G = E[g gᵀ] per matrix (running sums)
    edit = make_edit(model, f, "kfac", keep=0.8)          # keep 80% of the curvature mass per matrix
    with edit.applied_to(model): ...                      # or edit.apply(model) / edit.restore(model) / edit.save(dir)
"""

from .edit import METHODS, Edit, curvature_mask, edit_weight, make_edit, svd_rank_for
from .factors import Eigen, FactorConfig, KFACFactors, collect_factors, token_windows
from .targets import Target, mlp_matrices, resolve_target, resolve_targets

__all__ = ["METHODS", "Edit", "Eigen", "FactorConfig", "KFACFactors", "Target", "collect_factors", "curvature_mask",
           "edit_weight", "make_edit", "mlp_matrices", "resolve_target", "resolve_targets", "svd_rank_for",
           "token_windows"]
