"""Following the days circle across layers on SmolLM2-135M: the step 23→24 turns the circle plane far more than an
early block does and explains the next shape less (docs/manifolds.md, "From layer to layer").

Tolerances (measured over all 30 layers, 280 examples: 4→5 largest angle 16.8° with split-half noise 9.2°, shape R²
0.999; 23→24 49.3°, shape R² 0.959; shuffled-pairing shape R² p95 ≤ 0.06 everywhere): every step's shape R² > 0.9
and above the shuffled p95; 23→24's largest angle at least 15° above 4→5's, and its shape R² below 4→5's.
"""

from __future__ import annotations

import pytest

from probescope.manifolds import FindConfig, run_find

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_days_plane_turns_most_at_layer_24(smollm2, tmp_path):
    r = run_find(FindConfig(concept="days", n=280, layers=[4, 5, 23, 24], n_shuffles=3, out=str(tmp_path / "f")),
                 *smollm2)
    steps = {(f["from"], f["to"]): f for f in r["flow"]}
    assert set(steps) == {(4, 5), (5, 23), (23, 24)}
    for f in steps.values():
        assert f["r2_shape"] > 0.9 and f["r2_shape"] > f["baseline_r2_shape_p95"]
    early, late = steps[(4, 5)], steps[(23, 24)]
    assert late["rotation"] > early["rotation"] + 15
    assert late["r2_shape"] < early["r2_shape"]
