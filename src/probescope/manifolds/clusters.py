"""Unsupervised: group an SAE's decoder directions (Engels et al. 2024), and score each group's irreducibility.

- `graph_clusters(W, threshold)`: the connected components of the graph whose edges join decoder directions with
  cosine ≥ `threshold` (0.5 in the paper); groups of ≥ `min_size` latents.
- `average_clusters(W, threshold)`: average linkage — groups merged while their mean pairwise cosine is ≥
  `threshold` (no chaining through a path of close pairs).
- `spectral_clusters(W, n_clusters)`: spectral clustering on the angular similarity 1 − arccos(cos)/π.
- `cofire_directions(codes, W)`: each latent's mean reconstruction on the tokens where it fires, less the mean
  reconstruction over all tokens — its decoder row completed by the latents that fire with it. A TopK SAE often
  gives a concept's shared part ("a day name") a latent of its own and leaves each child (Monday, Tuesday, …) only
  its offset from the centre: the children's decoder rows are then near orthogonal (a circle around the origin
  has mean pairwise cosine ≈ 0) and no cosine threshold joins them, while their co-fire directions share the
  parent's part and do. Cluster these instead of the decoder rows with `--directions cofire`.
- Irreducibility of a group, from what its latents write: for the tokens where any of them fires, the
  reconstruction Σⱼ aⱼ·W_dec[j] projected on its top-2 PCA plane, each axis scaled to unit variance (so an
  ellipse reads as a circle), then
  - `mixture_index(Z, eps)`: the largest share of points inside a slab of half-width eps·rms(Z) around one line of
    the plane (best direction and offset). High: the points lie on lower-dimensional parts — a mixture of 1-D
    features, reducible. Low: they fill the plane (a circle, a disc).
  - `separability_index(Z)`: the least mutual information (nats, plug-in estimate on a 12×12 grid of quantile
    bins) between the two coordinates over rotations of the plane. ≈ 0: some rotation makes them independent
    (separable, reducible); a circle keeps them dependent at every angle.
  Latents that fire apart (one or the other) are dependent too, so a high separability alone does not make a group
  irreducible: it takes a low mixture index as well. Each score is shown beside random groups of the same size
  (`cluster_report`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def unit_rows(W: np.ndarray) -> np.ndarray:
    """Rows of W scaled to unit norm (a zero row is refused by name)."""
    W = np.asarray(W, dtype=np.float64)
    n = np.linalg.norm(W, axis=1)
    if (n == 0).any():
        raise ValueError(f"decoder rows {np.flatnonzero(n == 0)[:8].tolist()} are zero: a dead latent has no "
                         "direction; drop those rows first")
    return W / n[:, None]


def graph_clusters(W: np.ndarray, threshold: float = 0.5, min_size: int = 2) -> list[np.ndarray]:
    """Groups of decoder rows joined by cosine ≥ `threshold` (connected components), largest first."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold={threshold}: a cosine lies in [-1, 1]; the paper uses 0.5")
    U = unit_rows(W)
    A = U @ U.T >= threshold
    np.fill_diagonal(A, False)
    _, lab = connected_components(csr_matrix(A), directed=False)
    groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    return sorted((g for g in groups if len(g) >= min_size), key=lambda g: (-len(g), g[0]))


def average_clusters(W: np.ndarray, threshold: float = 0.75, min_size: int = 2) -> list[np.ndarray]:
    """Groups of rows merged bottom-up while the mean pairwise cosine between two groups is ≥ `threshold` (average
    linkage), largest first. Unlike `graph_clusters` (single linkage) it does not chain: a path of close pairs does
    not join two groups whose members are far apart on average."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold={threshold}: a cosine lies in [-1, 1]")
    U = unit_rows(W)
    if len(U) < 2:
        return []
    lab = fcluster(linkage(U, method="average", metric="cosine"), 1 - threshold, criterion="distance")
    groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    return sorted((g for g in groups if len(g) >= min_size), key=lambda g: (-len(g), g[0]))


def spectral_clusters(W: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """A cluster label per decoder row: spectral clustering on the angular similarity 1 − arccos(cos)/π."""
    from sklearn.cluster import SpectralClustering

    U = unit_rows(W)
    if not 2 <= n_clusters <= len(U):
        raise ValueError(f"n_clusters={n_clusters}: use between 2 and the number of rows ({len(U)})")
    S = 1 - np.arccos(np.clip(U @ U.T, -1, 1)) / np.pi
    return SpectralClustering(n_clusters, affinity="precomputed", random_state=seed).fit_predict(S)


def sibling_clusters(codes: np.ndarray, min_parent: float = 0.9, max_together: float = 0.05, min_fires: int = 5,
                     min_size: int = 2) -> list[tuple[int, np.ndarray]]:
    """Groups of latents that fire under one shared parent and rarely together: (parent, children), largest first.

    A TopK SAE often splits a concept into a parent latent that fires on every member ("a day name") and one child
    per member ("Tuesday") whose decoder directions are near orthogonal, so a cosine graph never joins them. Here a
    latent's parent is the latent, at least as frequent, that fires on the largest share of its tokens (≥
    `min_parent`); children of one parent that fire together on more than `max_together` of the rarer one's tokens
    are not siblings (only the more frequent of each such pair stays). `codes` [tokens, latents]; latents firing on
    fewer than `min_fires` tokens are left out."""
    from scipy.sparse import csr_matrix

    if not 0 < min_parent <= 1 or not 0 <= max_together < 1:
        raise ValueError(f"min_parent={min_parent}, max_together={max_together}: use 0 < min_parent ≤ 1 and "
                         "0 ≤ max_together < 1 (e.g. 0.9 and 0.05)")
    F = csr_matrix(np.asarray(codes) != 0, dtype=np.float32)
    count = np.asarray(F.sum(0)).ravel()
    co = (F.T @ F).tocsr()  # co-firing counts, sparse
    parent_of: dict[int, int] = {}
    for j in np.flatnonzero(count >= min_fires):
        row = co.getrow(j)
        cand, n = row.indices, row.data
        ok = (cand != j) & (count[cand] >= count[j])
        if not ok.any():
            continue
        best = int(np.argmax(np.where(ok, n, -1)))
        if n[best] / count[j] >= min_parent:
            parent_of[int(j)] = int(cand[best])
    by_parent: dict[int, list[int]] = {}
    for j, par in parent_of.items():
        if par not in parent_of or parent_of[par] != j:  # two latents that always fire together are no family
            by_parent.setdefault(par, []).append(j)
    out = []
    for par, kids in by_parent.items():
        kept: list[int] = []
        for j in sorted(kids, key=lambda x: -count[x]):
            if all(co[j, m] / min(count[j], count[m]) <= max_together for m in kept):
                kept.append(j)
        if len(kept) >= min_size:
            out.append((par, np.array(sorted(kept))))
    return sorted(out, key=lambda pg: (-len(pg[1]), pg[0]))


def cofire_directions(codes: np.ndarray, W: np.ndarray, min_fires: int = 3,
                      outlier: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """(D, latents): for each latent firing on ≥ `min_fires` of the tokens in `codes` [N, n], its mean
    reconstruction Σᵢ aᵢ·W[i] over those tokens less the mean reconstruction over all tokens ([m, d]), and the
    indices of those m latents (see the module doc). Tokens whose reconstruction norm exceeds `outlier` × the
    median are left out of both means: attention-sink positions (SmolLM2-135M's first token: norm ≈ 25,000
    against a median of 85) would otherwise be most of the global mean and give every latent the same direction."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(W):
        raise ValueError(f"codes of shape {codes.shape} do not match {len(W)} decoder rows: pass the latent "
                         "activations [tokens, latents] of this SAE")
    recon = codes.astype(np.float64) @ np.asarray(W, dtype=np.float64)  # [N, d]
    norm = np.linalg.norm(recon, axis=1)
    typical = norm <= outlier * np.median(norm)
    codes, recon = codes[typical], recon[typical]
    fires = codes > 0
    counts = fires.sum(0)
    latents = np.flatnonzero(counts >= min_fires)
    if not len(latents):
        raise ValueError(f"no latent fires on ≥ {min_fires} of the {len(codes)} tokens read: read more tokens "
                         "(--contexts) or lower min_fires")
    mean = fires[:, latents].T.astype(np.float64) @ recon / counts[latents, None]
    return mean - recon.mean(0), latents


def mean_cosine(W: np.ndarray, group: Sequence[int]) -> float:
    """Mean pairwise cosine of the group's decoder rows."""
    U = unit_rows(np.asarray(W)[np.asarray(group)])
    n = len(U)
    return float(((U @ U.T).sum() - n) / (n * (n - 1))) if n > 1 else float("nan")


def plane(R: np.ndarray) -> np.ndarray:
    """Points R [N, d] centred, projected on their top-2 PCA axes and each axis scaled to unit variance: [N, 2]."""
    Rc = R - R.mean(0)
    _, _, vt = np.linalg.svd(Rc, full_matrices=False)
    Z = Rc @ vt[:2].T
    return Z / np.maximum(Z.std(0), 1e-12)  # whitened: an ellipse reads as the circle it is up to scale


def mixture_index(Z: np.ndarray, eps: float = 0.1, n_angles: int = 180) -> float:
    """The largest share of the points Z [N, 2] in a slab of half-width eps·rms(Z) around a line (any direction,
    any offset)."""
    Z = np.asarray(Z, dtype=np.float64)
    w = eps * np.sqrt((Z ** 2).sum(1).mean())
    best = 0
    for a in np.linspace(0, np.pi, n_angles, endpoint=False):
        p = np.sort(Z @ np.array([np.cos(a), np.sin(a)]))
        best = max(best, int((np.searchsorted(p, p + 2 * w, side="right") - np.arange(len(p))).max()))
    return best / len(Z)


def _mi(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    qa = np.searchsorted(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]), a)
    qb = np.searchsorted(np.quantile(b, np.linspace(0, 1, bins + 1)[1:-1]), b)
    joint = np.zeros((bins, bins))
    np.add.at(joint, (qa, qb), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def separability_index(Z: np.ndarray, bins: int = 12, n_angles: int = 24) -> float:
    """The least mutual information (nats) between the two coordinates of Z [N, 2] over rotations of the plane."""
    Z = np.asarray(Z, dtype=np.float64)
    out = np.inf
    for a in np.linspace(0, np.pi / 2, n_angles, endpoint=False):
        c, s = np.cos(a), np.sin(a)
        out = min(out, _mi(Z @ np.array([c, s]), Z @ np.array([-s, c]), bins))
    return float(out)


def group_points(codes: np.ndarray, W: np.ndarray, group: Sequence[int], min_points: int = 50) -> np.ndarray | None:
    """The group's reconstructions on the tokens where any of its latents fires, on their top-2 plane (None when
    fewer than `min_points` tokens have it)."""
    g = np.asarray(group)
    A = np.asarray(codes)[:, g]
    on = (A != 0).any(1)
    if on.sum() < min_points:
        return None
    return plane(A[on] @ np.asarray(W, dtype=np.float64)[g])


def irreducibility(codes: np.ndarray, W: np.ndarray, group: Sequence[int], eps: float = 0.1,
                   min_points: int = 50) -> dict[str, Any]:
    """Mixture and separability indices of one group (see the module doc); `None` scores when it fires too rarely."""
    Z = group_points(codes, W, group, min_points)
    if Z is None:
        return {"size": len(group), "tokens": int((np.asarray(codes)[:, np.asarray(group)] != 0).any(1).sum()),
                "mixture": None, "separability": None}
    return {"size": len(group), "tokens": len(Z), "mixture": mixture_index(Z, eps),
            "separability": separability_index(Z)}


def cluster_report(W: np.ndarray, codes: np.ndarray | None = None, threshold: float = 0.5, min_size: int = 2,
                   n_random: int = 20, eps: float = 0.1, min_points: int = 50, seed: int = 0) -> list[dict[str, Any]]:
    """Per graph cluster of the decoder rows W [n, d]: its latents, size, mean cosine; with `codes` [N, n] (latent
    activations on N tokens), its irreducibility beside the mean and 95% range of `n_random` random groups of the
    same size (drawn from latents that fire on ≥ `min_points` tokens)."""
    W = np.asarray(W, dtype=np.float64)
    if codes is not None and np.asarray(codes).shape[1] != len(W):
        raise ValueError(f"codes have {np.asarray(codes).shape[1]} latents but the decoder has {len(W)} rows: "
                         "use the activations of this SAE")
    rng = np.random.default_rng(seed)
    live = None if codes is None else np.flatnonzero((np.asarray(codes) != 0).sum(0) >= 1)
    out = []
    for g in graph_clusters(W, threshold, min_size):
        row: dict[str, Any] = {"latents": g.tolist(), "size": len(g), "mean_cosine": mean_cosine(W, g)}
        if codes is not None:
            row.update({k: v for k, v in irreducibility(codes, W, g, eps, min_points).items() if k != "size"})
            rand = []
            for _ in range(n_random):
                if len(live) < len(g):
                    break
                r = irreducibility(codes, W, rng.choice(live, len(g), replace=False), eps, min_points)
                if r["mixture"] is not None:
                    rand.append((r["mixture"], r["separability"]))
            if rand:
                R = np.array(rand)
                row["random"] = {"n": len(R), "mixture_mean": float(R[:, 0].mean()),
                                 "mixture_range": [float(x) for x in np.percentile(R[:, 0], [2.5, 97.5])],
                                 "separability_mean": float(R[:, 1].mean()),
                                 "separability_range": [float(x) for x in np.percentile(R[:, 1], [2.5, 97.5])]}
        out.append(row)
    return out
