"""`probescope manifold clusters`: the unsupervised half of `find` (Engels et al. 2024) on an SAE folder.

Per cluster of decoder directions (graph or spectral, `clusters.py`): size, mean cosine, the irreducibility
scores on the tokens where its latents fire, each beside random clusters of the same size, the latents' labels
(when the folder has latents.json), and a circle fit of its unit decoder directions: in their top-k PCA space,
latents ordered by their angle in the top-2 plane are given evenly spaced angles and the circle of
`geometry.circle_plane_r2` is fitted through them. Ordering by angle flatters any blob, so the R² is shown beside
two baselines: the same latents in random orders (does the order matter?) and random clusters of the same size put
through the same procedure (is this cluster rounder than chance?). "circle" only when it beats both 95th
percentiles; a cluster of fewer than 3 latents is "no manifold found" (too small to fit). With `--directions
cofire` each latent's co-fire direction (`clusters.cofire_directions`) stands in for its decoder row in the
clustering, the mean cosine and the circle fit; the irreducibility still reads what the group's decoder rows write.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .clusters import (average_clusters, cofire_directions, graph_clusters, irreducibility, mean_cosine,
                       sibling_clusters, spectral_clusters, unit_rows)
from .config import ClustersConfig
from .geometry import circle_plane_r2, pca

MIN_FIT = 3


def angle_order(W: np.ndarray) -> np.ndarray:
    """Rank of each unit row by its angle in the rows' top-2 PCA plane (0..n−1)."""
    U = unit_rows(W)
    mu, V, _ = pca(U, 2)
    Z = (U - mu) @ V.T
    a = np.arctan2(Z[:, 1], Z[:, 0]) if Z.shape[1] > 1 else Z[:, 0]
    return np.argsort(np.argsort(a))


def order_r2(U: np.ndarray, ranks: np.ndarray, k: int) -> float:
    n = len(U)
    return circle_plane_r2(U, ranks, n, max(2, min(k, n - 1)))[0]


def shape_fit(W: np.ndarray, group: Sequence[int], k: int, pool: np.ndarray, n_draws: int,
              rng: np.random.Generator) -> dict[str, Any]:
    """Circle R² of the group's decoder directions ordered by angle, beside order permutations and random groups."""
    g = np.asarray(group)
    n = len(g)
    if n < MIN_FIT:
        return {"shape": f"no manifold found (a cluster of {n} latents is too small to fit a shape; "
                         f"≥ {MIN_FIT} needed)", "circle_r2": None}
    U = unit_rows(np.asarray(W)[g])
    r2 = order_r2(U, angle_order(U), k)
    perm = [order_r2(U, rng.permutation(n), k) for _ in range(n_draws)]
    rand = []
    for _ in range(n_draws):
        R = unit_rows(np.asarray(W)[rng.choice(pool, n, replace=False)])
        rand.append(order_r2(R, angle_order(R), k))
    p_perm, p_rand = float(np.percentile(perm, 95)), float(np.percentile(rand, 95))
    found = r2 > p_perm and r2 > p_rand
    return {"circle_r2": r2, "order_permuted_mean": float(np.mean(perm)), "order_permuted_p95": p_perm,
            "random_cluster_mean": float(np.mean(rand)), "random_cluster_p95": p_rand,
            "shape": "circle" if found else "no manifold found (the circle R² does not beat the 95th percentile of "
                                            "both order-permuted and random-cluster baselines)"}


def _labels(path: str, group: Sequence[int]) -> list[str] | None:
    from pathlib import Path

    from ..core.io import read_json

    f = Path(path) / "latents.json"
    if not f.exists():
        return None
    lat = read_json(f).get("latents", {})
    out = []
    for j in group:
        r = lat.get(str(int(j)), {})
        out.append(r.get("label") or " / ".join(r.get("top_tokens", [])[:3]) or "(dead)")
    return out


def check_weights(W: np.ndarray, path: str) -> None:
    bad = ~np.isfinite(W).all(1)
    if bad.any():
        raise ValueError(f"the SAE in {path} has non-finite decoder rows {np.flatnonzero(bad)[:8].tolist()} (NaN or "
                         "inf): the training diverged; retrain it (or drop those latents) before clustering")


def sae_codes(sae: Any, model: Any, input_ids: Any, batch_size: int) -> np.ndarray:
    """Dense latent activations [N tokens, n_latents] of `sae` on `input_ids` [B, T] at its hook point."""
    import torch

    from ..core.progress import progress
    from ..core.sites import read_sites, resolve_site

    site = resolve_site(model, sae.cfg.hook_in)
    out = []
    with torch.no_grad(), progress(input_ids.shape[0], "encoding", unit="context") as bar:
        for s in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[s:s + batch_size]
            acts = read_sites(model, ids, torch.ones_like(ids), [site])[site]
            out.append(sae.encode(acts.reshape(-1, acts.shape[-1]).float()).dense().float().cpu().numpy())
            bar.advance(len(ids))
    return np.concatenate(out)


def run_clusters(cfg: ClustersConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Cluster the SAE's decoder directions and score every cluster beside random ones (see the module doc)."""
    from ..core.models import model_id
    from ..core.store import make_contexts
    from ..report.job import open_job
    from ..sae.formats import check_sae_sites, load_sae

    sae = load_sae(cfg.sae, hook=cfg.site or None)
    if cfg.model and sae.cfg.model and cfg.model != sae.cfg.model:
        raise ValueError(f"the SAE in {cfg.sae} was trained on {sae.cfg.model}, not {cfg.model}: pick an SAE "
                         f"trained on {cfg.model}, or pass --model {sae.cfg.model}")
    name = cfg.model or sae.cfg.model
    if model is None and not name:
        raise ValueError(f"the SAE in {cfg.sae} names no model: pass --model")
    W = sae.W_dec.detach().double().cpu().numpy()
    check_weights(W, cfg.sae)
    if cfg.n_clusters > len(W):
        raise ValueError(f"--n-clusters {cfg.n_clusters}: the SAE has only {len(W)} latents; use fewer")
    if cfg.directions == "cofire" and cfg.min_fires > cfg.contexts * cfg.context_len:
        raise ValueError(f"--min-fires {cfg.min_fires}: only {cfg.contexts * cfg.context_len} tokens are read "
                         "(--contexts × --context-len); read more or lower --min-fires")
    with open_job(cfg, "manifold-clusters", model, tokenizer, name=name) as job:
        model, tokenizer = job.model, job.tokenizer
        check_sae_sites(sae, model, cfg.sae, name or model_id(model))
        ids = make_contexts(tokenizer, job.texts(), cfg.context_len, max_contexts=cfg.contexts)
        run = job.run
        run.write_config(cfg)
        codes = sae_codes(sae, model, ids, cfg.batch_size)
        live = np.flatnonzero((codes != 0).sum(0) >= 1)
        alive = live if len(live) else np.arange(len(W))
        if cfg.directions == "cofire":  # decoder rows completed by the latents that fire with them
            D, keep = cofire_directions(codes, W, cfg.min_fires)
            G = np.zeros_like(W)
            G[keep] = D
        else:
            G, keep = W, np.flatnonzero(np.linalg.norm(W, axis=1) > 0)
        parents: list[int | None] = []
        if cfg.group_by == "siblings":
            fam = sibling_clusters(codes, cfg.min_parent, min_size=cfg.min_size)[:cfg.top]
            groups, parents = [g for _, g in fam], [p for p, _ in fam]
        else:
            if cfg.n_clusters:
                lab = spectral_clusters(G[keep], cfg.n_clusters, cfg.seed)
                groups = [keep[lab == c] for c in np.unique(lab)]
                groups = [g for g in groups if len(g) >= cfg.min_size]
            else:
                join = average_clusters if cfg.linkage == "average" else graph_clusters
                groups = [keep[g] for g in join(G[keep], cfg.threshold, cfg.min_size)]
            groups = sorted(groups, key=lambda g: -mean_cosine(G, g))[:cfg.top]
            parents = [None] * len(groups)
        rng = np.random.default_rng(cfg.seed)
        rows = []
        for g, par in zip(groups, parents):
            row: dict[str, Any] = {"latents": g.tolist(), "size": len(g), "mean_cosine": mean_cosine(G, g)}
            if par is not None:
                row["parent"] = int(par)
                row["parent_label"] = (_labels(cfg.sae, [par]) or [None])[0]
            row.update({k: v for k, v in irreducibility(codes, W, g, min_points=cfg.min_points).items() if k != "size"})
            rand = [irreducibility(codes, W, rng.choice(alive, len(g), replace=False), min_points=cfg.min_points)
                    for _ in range(cfg.n_random)] if len(alive) >= len(g) else []
            rand = [r for r in rand if r["mixture"] is not None]
            if rand:
                row["random_mixture_mean"] = float(np.mean([r["mixture"] for r in rand]))
                row["random_separability_mean"] = float(np.mean([r["separability"] for r in rand]))
            row["random_cosine_mean"] = float(np.mean([mean_cosine(G, rng.choice(keep, len(g), replace=False))
                                                       for _ in range(cfg.n_random)]))
            row.update(shape_fit(G, g, cfg.k, keep, cfg.n_random, rng))
            row["labels"] = _labels(cfg.sae, g)
            rows.append(row)
    n_circle = sum(r["shape"] == "circle" for r in rows)
    summary = {"model": name or model_id(model), "site": sae.cfg.hook_in, "sae": cfg.sae, "n_latents": len(W),
               "directions": cfg.directions,
               "method": (f"siblings (parent on ≥ {cfg.min_parent:.0%} of a child's tokens)" if cfg.group_by == "siblings"
                          else f"spectral ({cfg.n_clusters})" if cfg.n_clusters
                          else f"{cfg.linkage} linkage (cosine ≥ {cfg.threshold:g})"),
               "n_tokens": int(codes.shape[0]), "n_clusters": len(rows), "n_circles": n_circle,
               "verdict": f"{n_circle} circle(s) among {len(rows)} clusters" if n_circle else "no manifold found"}
    fit = [i for i, r in enumerate(rows) if r["circle_r2"] is not None]
    plots = [{"type": "line", "title": "clusters: circle R² of the decoder directions, beside baselines",
              "x_label": "cluster (rank as listed)", "y_label": "circle R²",
              "series": [{"name": n, "x": fit, "y": [rows[i][key] for i in fit]}
                         for n, key in (("cluster", "circle_r2"), ("order permuted (95th pct)", "order_permuted_p95"),
                                        ("random cluster (95th pct)", "random_cluster_p95"))]}]
    run.write_metrics({**summary, "clusters": rows, "plots": plots if fit else []}, report=False)
    return {"run_dir": str(run.path), **summary, "clusters": rows}
