"""Unsupervised manifolds: graph and spectral clustering of decoder directions recover planted groups; the
irreducibility scores tell a circle from a mixture of 1-D features and from independent ones.

Tolerances: planted groups are 6 directions at cosine ≈ 0.8 to their centre (pairwise ≈ 0.64) in 64-D, the 40
background directions are random (|cos| < 0.5 for this seed); recovery is exact (adjusted Rand index 1). The
circle's mixture index is < 0.25 (a slab of half-width 0.1 tangent to the unit circle holds an arc of 2·arccos(0.8) = 74°, 0.205 of it) and its separability > 0.3 nats; the mixture's index is > 0.45 (half its points
lie on each axis); independent uniform coordinates give separability < 0.05 nats (plug-in bias on 4000 points with
12×12 bins is about 0.02 nats).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from probescope.manifolds.clusters import (cluster_report, graph_clusters, mean_cosine, mixture_index,
                                           separability_index, spectral_clusters)


def planted_decoder(seed: int = 0, d: int = 64, groups: int = 3, per: int = 6, background: int = 40):
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for g in range(groups):
        c = rng.normal(size=d)
        c /= np.linalg.norm(c)
        for _ in range(per):
            e = rng.normal(size=d)
            e -= (e @ c) * c
            e /= np.linalg.norm(e)
            rows.append(0.8 * c + 0.6 * e)
            truth.append(g)
    rows += list(rng.normal(size=(background, d)))
    truth += [-1] * background
    perm = rng.permutation(len(rows))
    return np.array(rows)[perm] * rng.uniform(0.5, 2, size=(len(rows), 1)), np.array(truth)[perm]


def test_graph_clusters_recover_planted_groups():
    W, truth = planted_decoder()
    groups = graph_clusters(W, 0.5)
    assert len(groups) == 3
    assert sorted(sorted(set(truth[g])) for g in groups) == [[0], [1], [2]]
    assert sorted(len(g) for g in groups) == [6, 6, 6]
    assert all(0.55 < mean_cosine(W, g) < 0.75 for g in groups)
    assert graph_clusters(W, 0.99) == []  # nothing that close


def test_spectral_clusters_recover_planted_groups():
    W, truth = planted_decoder(seed=1)
    keep = truth >= 0
    lab = spectral_clusters(W[keep], 3)
    assert adjusted_rand_score(truth[keep], lab) == pytest.approx(1.0)


def test_irreducibility_tells_circle_from_mixture_and_independent():
    rng = np.random.default_rng(2)
    th = rng.uniform(0, 2 * np.pi, 4000)
    circle = np.stack([np.cos(th), np.sin(th)], 1) + 0.02 * rng.normal(size=(4000, 2))
    t = rng.uniform(0.2, 1, 4000)
    axis = rng.integers(0, 2, 4000)
    mixture = np.stack([t * (axis == 0), t * (axis == 1)], 1)
    indep = rng.uniform(-1, 1, size=(4000, 2))
    assert mixture_index(circle) < 0.25 and mixture_index(mixture) > 0.45
    assert separability_index(circle) > 0.3 and separability_index(indep) < 0.05


def test_cluster_report_scores_beside_random_groups():
    """A planted circle group (two latents co-firing as cos/sin of one angle) scores low mixture and high
    separability; random pairs of rarely, independently firing latents are mixtures."""
    rng = np.random.default_rng(3)
    d, n_lat, N = 32, 30, 3000
    W = rng.normal(size=(n_lat, d))
    base = rng.normal(size=d)
    W[0] = base + 0.5 * rng.normal(size=d)
    W[1] = base + 0.5 * rng.normal(size=d)
    W[2:] -= np.outer(W[2:] @ base / (base @ base), base)  # background rows: far from the pair
    codes = np.where(rng.random((N, n_lat)) < 0.05, rng.uniform(0.5, 1.5, (N, n_lat)), 0.0)
    th = rng.uniform(0, 2 * np.pi, N)
    codes[:, 0], codes[:, 1] = 2 + np.cos(th), 2 + np.sin(th)  # always on, moving together on a circle
    rep = cluster_report(W, codes, threshold=0.5, n_random=10, seed=0)
    assert [r["latents"] for r in rep] == [[0, 1]]
    r = rep[0]
    assert r["mixture"] < 0.25 and r["separability"] > 0.3
    # random pairs of latents that fire apart: on the tokens where either fires, one axis or the other — a mixture
    # (their mutual information is high too: exclusive firing is dependence; the mixture index is what tells)
    assert r["random"]["mixture_range"][0] > 0.4 > r["mixture"]
    with pytest.raises(ValueError, match="use the activations of this SAE"):
        cluster_report(W, codes[:, :5])
    with pytest.raises(ValueError, match="dead latent"):
        graph_clusters(np.zeros((3, 4)))


def test_sibling_clusters_recover_a_split_concept():
    """Planted codes: a parent latent (0) fires on every 'day' token, one child per day (1..7) fires with it and
    never with another child; latent 8 always fires with 9 (a pair, no family); 10..29 fire at random. The siblings
    are found with their parent; the always-together pair, a child firing with a sibling, and the noise are not."""
    import numpy as np

    from probescope.manifolds import sibling_clusters

    rng = np.random.default_rng(0)
    N, M = 3000, 30
    codes = np.zeros((N, M))
    day = rng.integers(0, 7, size=N)
    is_day = rng.random(N) < 0.4
    codes[is_day, 0] = 1.0
    codes[np.flatnonzero(is_day), 1 + day[is_day]] = rng.uniform(0.5, 2, size=int(is_day.sum()))
    pair = rng.random(N) < 0.1
    codes[pair, 8] = codes[pair, 9] = 1.0
    codes[:, 10:] = (rng.random((N, 20)) < 0.05) * 1.0
    fams = sibling_clusters(codes, min_parent=0.9)
    assert [(p, g.tolist()) for p, g in fams] == [(0, list(range(1, 8)))]
    # a child that also fires with its sibling on a third of its tokens is dropped (only the more frequent stays)
    codes[np.flatnonzero(is_day & (day == 0))[::3], 2] = 1.0
    fams = sibling_clusters(codes, min_parent=0.9)
    assert len(fams) == 1 and len(fams[0][1]) == 6 and fams[0][0] == 0
    with pytest.raises(ValueError, match="min_parent=0"):
        sibling_clusters(codes, min_parent=0.0)


def test_cofire_directions_join_a_split_circle():
    """A TopK-style split: a parent latent (0) carries the shared 'a day name' direction p and each of 7 children
    (1..7) carries only its day's offset from the centre: 0.8 × a point of a circle around the origin in a plane
    orthogonal to p, plus 0.6 × a direction of its own — decoder rows of mean pairwise cosine −0.11 (neighbours
    0.40), so the graph at 0.5 joins none of them. Their co-fire directions (≈ 1.2·p + the offset, less the global
    mean) join all 7 with the parent at 0.5 (mean pairwise cosine 0.53), the children's circle fit reaches R² > 0.95
    (0.984; 20 random orders stay ≥ 0.1 below), and the 20 noise latents stay apart (random 64-D rows)."""
    from probescope.manifolds.clusters import cofire_directions
    from probescope.manifolds.sae_clusters import angle_order, order_r2

    rng = np.random.default_rng(0)
    d, N = 64, 4000
    Q, _ = np.linalg.qr(rng.normal(size=(d, 10)))
    p, e1, e2, U = Q[:, 0], Q[:, 1], Q[:, 2], Q[:, 3:].T
    th = 2 * np.pi * np.arange(7) / 7
    kids = 0.8 * (np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2) + 0.6 * U  # the circle + each day's own part
    W = np.concatenate([[2.0 * p], kids, rng.normal(size=(20, d))])
    codes = np.zeros((N, 28))
    day, is_day = rng.integers(0, 7, size=N), rng.random(N) < 0.4
    codes[is_day, 0] = 1.0
    codes[np.flatnonzero(is_day), 1 + day[is_day]] = 1.0
    codes[:, 8:] = (rng.random((N, 20)) < 0.05) * rng.uniform(0.5, 2, size=(N, 20))
    assert graph_clusters(W[1:8], 0.5) == [] and mean_cosine(W, range(1, 8)) < 0  # the decoder rows: no group
    sink = np.zeros((40, 28))  # attention-sink tokens: a noise latent at 1,000× the usual size, left out
    sink[:, 8] = 1000.0
    codes = np.concatenate([codes, sink])
    D, lat = cofire_directions(codes, W)
    assert lat.tolist() == list(range(28))
    groups = [lat[g] for g in graph_clusters(D, 0.5)]
    assert [sorted(g.tolist()) for g in groups] == [list(range(8))]
    K = D[1:8] / np.linalg.norm(D[1:8], axis=1, keepdims=True)
    r2 = order_r2(K, angle_order(K), 5)  # 0.984 here; random orders of the same 7 give 0.48–0.74
    assert r2 > 0.95 and r2 > max(order_r2(K, rng.permutation(7), 5) for _ in range(20)) + 0.1
    D_all, _ = cofire_directions(codes, W, outlier=np.inf)  # kept in, the sink is most of the global mean
    assert graph_clusters(D_all, 0.5)[0].size > 20
    with pytest.raises(ValueError, match="do not match 27 decoder rows"):
        cofire_directions(codes, W[:27])
    with pytest.raises(ValueError, match="no latent fires on ≥ 5000"):
        cofire_directions(codes, W, min_fires=5000)


def test_average_linkage_does_not_chain():
    """Two planted groups (6 rows each at cosine ≈ 0.8 to their centre, centres orthogonal) bridged by a path of 4
    rows stepping from one centre to the other: single linkage at 0.5 (connected components) chains all 16 into one
    group; average linkage at 0.5 keeps the two groups apart (the bridge rows join the nearer side or stay alone)."""
    from probescope.manifolds.clusters import average_clusters

    rng = np.random.default_rng(4)
    Q, _ = np.linalg.qr(rng.normal(size=(64, 16)))
    a, b = Q[:, 0], Q[:, 1]
    rows = [0.8 * a + 0.6 * Q[:, 2 + i] for i in range(6)] + [0.8 * b + 0.6 * Q[:, 8 + i] for i in range(6)]
    rows += [np.cos(t) * a + np.sin(t) * b for t in np.linspace(0.3, 1.27, 4)]  # the bridge: about 18° apart
    W = np.array(rows)
    assert [len(g) for g in graph_clusters(W, 0.5)] == [16]
    groups = average_clusters(W, 0.5)
    assert not any({0, 6} <= set(g.tolist()) for g in groups)
    assert any(set(range(6)) <= set(g.tolist()) for g in groups)
    assert any(set(range(6, 12)) <= set(g.tolist()) for g in groups)
    assert average_clusters(W[:1], 0.5) == []
    with pytest.raises(ValueError, match="threshold=2"):
        average_clusters(W, 2)
