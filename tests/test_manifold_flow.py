"""Following a manifold from layer to layer: a planted circle whose plane is turned by a known angle between two
synthetic 'layers' gives that angle back, and the linear map between the layers' PCA spaces explains the next
layer's shape.

Tolerances: 7 values × 60 examples in 16-D; layer a's circle (radius 3) lies in span(e₁, e₂), layer b's in
span(cos φ·e₁ + sin φ·e₃, e₂), both plus isotropic noise σ = 0.1 per coordinate. The largest principal angle is
within 1° of φ and the smallest within 1° of 0: the noise in the 7 means (0.1/√60 per coordinate) tilts each fitted
plane by ≈ 0.013·√(2/7)·√14 / 3 rad ≈ 0.35°, so two planes ≈ 0.7° (measured 0.69–0.74° for this seed; with σ = 0.3 in 32-D it is ≈ 2.7°, measured 4° between two planes).
Layer b = a rotation of layer a (plus fresh noise), so the map explains its shape with R² > 0.95, while with the
pairing shuffled it stays < 0.2 (the shuffled map averages the values away).
"""

from __future__ import annotations

import numpy as np
import pytest

from probescope.manifolds.flow import layer_flow, layer_step, principal_angles


def layers(phi_deg: float, seed: int = 0, d: int = 16, per: int = 60, period: int = 7):
    rng = np.random.default_rng(seed)
    v = np.repeat(np.arange(period), per)
    th = 2 * np.pi * v / period
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    e1, e2, e3 = q[:, 0], q[:, 1], q[:, 2]
    phi = np.radians(phi_deg)
    base = rng.normal(size=d)
    Xa = base + 3 * (np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2) + 0.1 * rng.normal(size=(len(v), d))
    f1 = np.cos(phi) * e1 + np.sin(phi) * e3
    Xb = base + 3 * (np.cos(th)[:, None] * f1 + np.sin(th)[:, None] * e2) + 0.1 * rng.normal(size=(len(v), d))
    return Xa, Xb, v


@pytest.mark.parametrize("phi", [0.0, 20.0, 45.0, 70.0])
def test_planted_rotation_angle_is_recovered(phi):
    Xa, Xb, v = layers(phi)
    r = layer_step(Xa, Xb, v, 7, 5)
    assert abs(r["rotation"] - phi) < 1.0 if phi else r["rotation"] < 1.0
    assert r["angles"][0] < 1.0
    assert 0 < r["split_half_rotation"] < 3.0  # noise floor: half the examples, ≈ √2 × 0.35° per plane
    assert r["r2_shape"] > 0.95 and r["r2_examples"] > 0.5
    assert r["baseline_r2_shape"] < 0.2 and r["baseline_r2_shape_p95"] < r["r2_shape"]


def test_flow_over_three_layers_and_ordinal_planes():
    Xa, Xb, v = layers(30.0)
    _, Xc, _ = layers(30.0, seed=0)
    flow = layer_flow({4: Xa, 8: Xb, 12: Xc}, v, None, 5, n_shuffles=3)
    assert [(f["from"], f["to"]) for f in flow] == [(4, 8), (8, 12)]
    assert all(len(f["angles"]) == 2 for f in flow)


def test_principal_angles_of_known_planes():
    e = np.eye(4)
    A = e[:, :2]
    B = np.stack([np.cos(0.5) * e[:, 0] + np.sin(0.5) * e[:, 2], e[:, 1]], 1)
    assert np.allclose(principal_angles(A, B), [0.0, np.degrees(0.5)], atol=1e-6)
    with pytest.raises(ValueError, match="widths"):
        layer_step(np.zeros((14, 3)), np.zeros((14, 4)), np.repeat(np.arange(7), 2), 7, 2)


def test_find_writes_the_flow_in_metrics_and_page(tmp_path, tiny_models):
    """run_find on tiny-llama (days, 3 layers): the metrics hold one step per consecutive pair with finite R²s and
    angles in [0°, 90°], the plots title both axes, and the page renders the flow table."""
    import json

    from probescope.manifolds import FindConfig, run_find
    import probescope.manifolds.report  # noqa: F401  (registers the page sections, as the CLI does)
    from probescope.report import render_report

    r = run_find(FindConfig(model="tiny-llama", concept="days", n=70, layers=[1, 2, 3], n_shuffles=2,
                            out=str(tmp_path / "f")), *tiny_models["tiny-llama"])
    assert [(f["from"], f["to"]) for f in r["flow"]] == [(1, 2), (2, 3)]
    for f in r["flow"]:
        assert np.isfinite([f["r2_shape"], f["r2_examples"], f["rotation"]]).all()
        assert all(0 <= a <= 90 for a in f["angles"])
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert len(m["flow"]) == 2 and all(p["x_label"] and p["y_label"] for p in m["plots"])
    assert any("principal angles" in p["title"] for p in m["plots"])
    page = render_report(tmp_path / "f").read_text()
    assert "From layer to layer" in page
