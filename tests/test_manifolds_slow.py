"""Concept manifolds on SmolLM2-135M: the days circle is found beside both baselines, and moving the day along it
changes the next-day answer far beyond chance (bench/manifolds.py has the full tables).

Tolerances (measured: circle-plane R² 0.954 at layer 12 and 0.962 at 19 against order-permuted 95th percentiles of
0.64–0.80; LOO 15–17° against means of 113–121° for either baseline; next-day circle ×4 at layer 14: 50% of 84 rows, no edit
6%, average-ablation 15%): R² > 0.9 and above the order baseline's 95th percentile, LOO < 30°; the circle edit
at least 25 points above no edit, and average-ablation below 30%; the order baseline's 5th-percentile LOO above
45°.
"""

from __future__ import annotations

import pytest

from probescope.manifolds import FindConfig, MoveConfig, run_find, run_move

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_days_circle_found_beside_both_baselines(smollm2, tmp_path):
    model, tok = smollm2
    r = run_find(FindConfig(concept="days", n=280, layers=[12, 19], n_shuffles=5, out=str(tmp_path / "f")),
                 model, tok)
    assert r["verdict"] == "manifold found"
    for row in r["layers"]:
        assert row["r2_plane"] > 0.9 and row["r2_plane"] > row["baseline_order_p95"]["r2_plane"]
        assert row["loo"] < 30 and row["baseline_order_p95"]["loo"] > 45


def test_next_day_circle_edit_moves_the_answer(smollm2, tmp_path):
    model, tok = smollm2
    r = run_move(MoveConfig(task="next-day", layers=[14], strengths=[4.0], out=str(tmp_path / "m")), model, tok)
    rows = {x["method"]: x["success"] for x in r["rows"]}
    assert r["n_rows"] == 84
    assert rows["circle"] > r["no_edit"]["success"] + 0.25
    assert rows["average"] < 0.3
