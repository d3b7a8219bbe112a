"""`manifold clusters` on a tiny SAE folder written with the SAE wing's own `save_sae`: planted groups of decoder
directions are found, a planted circle of 8 latents is called a circle beside its baselines, and bad input (another
model or site, non-finite weights, a cluster too small to fit) is refused or reported plainly.

Tolerances: the SAE reads resid_post.1 of tiny-llama (width 64) with 48 latents: a circle group of 8 unit
directions c·0.8 + 0.6·(cos θ e₁ + sin θ e₂) (θ evenly spaced; pairwise cosine ≥ 0.64), a pair at cosine 0.8, and
38 random directions (|cos| < 0.5 for this seed). Both groups are recovered exactly; the circle's R² is > 0.99
(it is exact up to float error) and above both baselines' 95th percentiles; the pair is "no manifold found".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probescope.manifolds.config import ClustersConfig
from probescope.manifolds.sae_clusters import run_clusters
from probescope.sae import SAE
from probescope.sae.config import SAEConfig
from probescope.sae.formats import WEIGHTS, save_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(seed: int = 0, d: int = 64):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, 5)))
    c, e1, e2, p, f = q.T
    th = 2 * np.pi * np.arange(8) / 8
    circle = 0.8 * c + 0.6 * (np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2)
    pair = np.stack([p, 0.8 * p + 0.6 * f])
    rows = np.concatenate([circle, pair, rng.normal(size=(38, d))])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_sae(path, W, model="tiny-llama", hook="resid_post.1"):
    cfg = SAEConfig(d_in=W.shape[1], n_latents=len(W), k=8, hook_in=hook, model=model)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor(W, dtype=torch.float32))
        sae.W_enc.copy_(torch.tensor(W, dtype=torch.float32))
    save_sae(sae, path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models["tiny-llama"]


def test_planted_groups_and_circle_are_found(tmp_path, tiny):
    path = write_sae(tmp_path / "sae", planted())
    (path / "latents.json").write_text(json.dumps({"n_tokens": 1, "latents": {
        str(j): {"label": f"day{j}"} for j in range(8)}}))
    r = run_clusters(ClustersConfig(sae=str(path), contexts=16, context_len=32, n_random=20, min_points=20,
                                    out=str(tmp_path / "run")), *tiny)
    groups = {tuple(c["latents"]): c for c in r["clusters"]}
    assert set(groups) == {tuple(range(8)), (8, 9)}
    circ, pair = groups[tuple(range(8))], groups[(8, 9)]
    assert circ["circle_r2"] > 0.99 and circ["shape"] == "circle"
    assert circ["circle_r2"] > circ["order_permuted_p95"] and circ["circle_r2"] > circ["random_cluster_p95"]
    assert circ["order_permuted_p95"] < 0.9
    assert circ["labels"] == [f"day{j}" for j in range(8)]
    assert pair["circle_r2"] is None and pair["shape"].startswith("no manifold found")
    assert circ["mean_cosine"] > circ["random_cosine_mean"] + 0.5
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_circles"] == 1 and all(p["x_label"] and p["y_label"] for p in m["plots"])
    import probescope.manifolds.report  # noqa: F401  (registers the page sections, as the CLI does)
    from probescope.report import render_report

    page = render_report(tmp_path / "run").read_text()
    assert "Clusters of 48 decoder directions" in page and "day7" in page and "too small" in page


def test_spectral_option_groups_the_circle(tmp_path, tiny):
    path = write_sae(tmp_path / "sae", planted())
    r = run_clusters(ClustersConfig(sae=str(path), n_clusters=3, contexts=4, context_len=16, n_random=5,
                                    out=str(tmp_path / "run")), *tiny)
    assert any(set(range(8)) <= set(c["latents"]) for c in r["clusters"])


def test_bad_input_is_refused_before_writing(tmp_path, tiny):
    path = write_sae(tmp_path / "sae", planted())
    with pytest.raises(ValueError, match="trained on tiny-llama, not smollm2-135m"):
        run_clusters(ClustersConfig(sae=str(path), model="smollm2-135m", out=str(tmp_path / "a")), *tiny)
    with pytest.raises(ValueError, match="resid_post.1, not resid_post.2"):
        run_clusters(ClustersConfig(sae=str(path), site="resid_post.2", out=str(tmp_path / "b")), *tiny)
    from probescope.core.io import load_tensors, save_tensors

    w = load_tensors(path / WEIGHTS)
    w["W_dec"][3, 5] = float("nan")
    save_tensors(path / WEIGHTS, w)
    with pytest.raises(ValueError, match=r"non-finite decoder rows \[3\]"):
        run_clusters(ClustersConfig(sae=str(path), out=str(tmp_path / "c")), *tiny)
    with pytest.raises(ValueError, match="--sae"):
        ClustersConfig()
    with pytest.raises(ValueError, match="threshold"):
        ClustersConfig(sae="x", threshold=1.5)
    assert not any((tmp_path / x).exists() for x in "abc")


def test_too_small_cluster_says_no_manifold(tmp_path, tiny):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(40, 64))
    W[1] = W[0] + 0.1 * rng.normal(size=64)
    r = run_clusters(ClustersConfig(sae=str(write_sae(tmp_path / "sae", W)), contexts=4, context_len=16,
                                    n_random=5, out=str(tmp_path / "run")), *tiny)
    assert r["verdict"] == "no manifold found"
    assert [c["size"] for c in r["clusters"]] == [2] and "too small" in r["clusters"][0]["shape"]


def test_cofire_option_clusters_firing_latents(tmp_path, tiny):
    """`directions="cofire"`: only latents firing on ≥ min_fires of the tokens read are clustered, each group's
    mean cosine is that of its co-fire directions (recomputed here from the run's own codes), and a min_fires above
    the tokens read is refused before the run folder exists."""
    from probescope.core.store import make_contexts
    from probescope.core.data.corpus import corpus_texts
    from probescope.manifolds.clusters import cofire_directions, mean_cosine
    from probescope.manifolds.sae_clusters import sae_codes
    from probescope.sae.formats import load_sae

    path = write_sae(tmp_path / "sae", planted())
    cfg = ClustersConfig(sae=str(path), directions="cofire", min_fires=5, threshold=0.3, contexts=8, context_len=16,
                         n_random=5, min_points=5, out=str(tmp_path / "run"))
    r = run_clusters(cfg, *tiny)
    model, tok = tiny
    sae = load_sae(str(path))
    codes = sae_codes(sae, model, make_contexts(tok, corpus_texts(None), 16, max_contexts=8), 8)
    D, lat = cofire_directions(codes, sae.W_dec.detach().double().numpy(), 5)
    G = np.zeros((48, D.shape[1]))
    G[lat] = D
    assert r["directions"] == "cofire" and r["clusters"]
    import probescope.manifolds.report  # noqa: F401  (registers the page sections, as the CLI does)
    from probescope.report import render_report

    assert "Clusters of 48 co-fire directions (single linkage (cosine ≥ 0.3)" in render_report(tmp_path / "run").read_text()
    for c in r["clusters"]:
        assert set(c["latents"]) <= set(lat.tolist())
        assert c["mean_cosine"] == pytest.approx(mean_cosine(G, c["latents"]), abs=1e-6)
    with pytest.raises(ValueError, match="--min-fires 200: only 128 tokens"):
        run_clusters(ClustersConfig(sae=str(path), directions="cofire", min_fires=200, contexts=8, context_len=16,
                                    out=str(tmp_path / "bad")), *tiny)
    assert not (tmp_path / "bad").exists()


def test_average_linkage_option_finds_the_planted_groups(tmp_path, tiny):
    """`linkage="average"` at 0.45 finds the same two planted groups as the graph at 0.5, and says which clustering
    ran. Average linkage asks more than single: the circle's pairwise cosines run from 0.28 (opposite points) to
    0.89, and its two halves meet at a mean cosine of 0.486, so at 0.5 they stay two groups of 4 (checked); the
    pair is at 0.8; the random rows stay apart."""
    path = write_sae(tmp_path / "sae", planted())
    for th, want in ((0.45, {tuple(range(8)), (8, 9)}), (0.5, {(1, 2, 3, 4), (0, 5, 6, 7), (8, 9)})):
        r = run_clusters(ClustersConfig(sae=str(path), linkage="average", threshold=th, contexts=4, context_len=16,
                                        n_random=5, min_points=5, out=str(tmp_path / f"run{th}")), *tiny)
        assert {tuple(c["latents"]) for c in r["clusters"]} == want
    assert r["method"] == "average linkage (cosine ≥ 0.5)"
