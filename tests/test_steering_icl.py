"""ICL ↔ steering (issue 18), fast: the belief-model fits on synthetic grids, bad input, the job on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probescope.steering import icl
from probescope.steering.icl_tasks import IclTask, check_context

pytestmark = pytest.mark.usefixtures("one_thread")

SHOTS = [0, 1, 2, 3, 4, 6, 8]
STRENGTHS = [-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2]
TRUE = dict(a=2.0, b=-3.0, gamma=1.5, alpha=0.4)


@pytest.fixture(scope="module")
def tiny():
    from probescope.core.models import load_model

    return load_model("tiny-llama")


def test_fit_recovers_known_parameters():
    g = icl.synthetic_grid(**TRUE, shots=SHOTS, strengths=STRENGTHS, n_queries=40, noise=0.3, seed=1)
    N, M, Y = g.cells()
    p = icl.fit_published(N, M, Y).params
    assert p["a"] == pytest.approx(TRUE["a"], abs=0.05)
    assert p["b"] == pytest.approx(TRUE["b"], abs=0.1)
    assert p["gamma"] == pytest.approx(TRUE["gamma"], abs=0.1)
    assert p["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)


def test_heldout_checkerboard_and_flip_boundary():
    g = icl.synthetic_grid(**TRUE, shots=SHOTS, strengths=STRENGTHS, n_queries=40, noise=0.3, seed=2)
    pub, base = icl.heldout_eval(g, "published"), icl.heldout_eval(g, "logistic")
    assert pub["n_train"] + pub["n_heldout"] == len(SHOTS) * len(STRENGTHS)
    assert pub["heldout_r"] > 0.99 and pub["heldout_r2"] > 0.98
    assert pub["flip_cols_compared"] >= 3 and pub["flip_error_max"] < 0.5
    assert base["heldout_rmse"] > pub["heldout_rmse"]  # N^(1−α) is sub-linear: the linear baseline misses it


def test_weighting_keeps_the_flip_boundary_when_cells_saturate():
    """Measured log-odds plateau far from the boundary (the behaviour is certain either way): a published-form grid
    squashed by 6·tanh(y/6). Weighting cells by their Bernoulli information keeps the fit of the boundary region:
    the weighted fit's flip points stay within 0.5 shot of the true ones; unweighted least squares, pulled by the
    plateaus, does measurably worse."""
    shots, strengths = list(range(9)), [-1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3]
    g = icl.synthetic_grid(**TRUE, shots=shots, strengths=strengths, n_queries=40, noise=0.2, seed=3)
    g = icl.BeliefGrid(g.shots, g.strengths, 6 * np.tanh(g.values / 6))
    N, M, Y = g.cells()
    truth = icl.BeliefFit("published", dict(TRUE))
    errs = {}
    for weighted in (True, False):
        fit = icl.fit_published(N, M, Y, weighted=weighted)
        e = []
        for m in strengths:
            t = truth.flip_shots(m)
            if t is not None and 0 < t < 8:
                e.append(abs((fit.flip_shots(m) or 0.0) - t))
        errs[weighted] = max(e)
    assert len(e) >= 3
    assert errs[True] < 0.5
    assert errs[False] > 1.5 * errs[True]
    w = icl.cell_weights(np.array([0.0, 10.0, -10.0]))
    assert w[0] == pytest.approx(np.sqrt(0.25 + icl.WEIGHT_FLOOR)) and w[1] == pytest.approx(w[2]) and w[1] < w[0]


def test_conversion_formulas():
    fit = icl.BeliefFit("published", dict(TRUE))
    dn = fit.shots_for_strength(1.0, N0=2.0)  # γ[(N+ΔN)^(1−α) − N^(1−α)] = a·m
    assert TRUE["gamma"] * ((2 + dn) ** 0.6 - 2 ** 0.6) == pytest.approx(TRUE["a"] * 1.0, rel=1e-6)
    n_star = fit.flip_shots(0.5)
    assert float(fit.predict(n_star, 0.5)) == pytest.approx(0.0, abs=1e-9)
    assert fit.strength_for_shots(4) == pytest.approx(TRUE["gamma"] * 4 ** 0.6 / TRUE["a"])
    assert fit.flip_shots(5.0) is None  # already past the boundary at N = 0


def test_bootstrap_interval_covers_truth():
    g = icl.synthetic_grid(**TRUE, shots=SHOTS, strengths=STRENGTHS, n_queries=30, noise=0.5, seed=3)
    b = icl.bootstrap(g, n_boot=60, seed=0)
    lo, hi = b["shots_per_strength"]["ci95"]
    truth = icl.BeliefFit("published", dict(TRUE)).shots_for_strength(1.0)
    assert lo - 0.3 <= truth <= hi + 0.3 and hi - lo < 2


def test_no_effect_says_so():
    g = icl.synthetic_grid(a=1.0, b=0.0, gamma=0.0, alpha=0.5, shots=SHOTS, strengths=STRENGTHS, noise=0.2)
    with pytest.raises(icl.NoEffectError, match="no measurable in-context effect"):
        icl.check_effect(g)


def test_shots_beyond_context(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"N=500 shots .* context is 1024: use at most"):
        check_context(model, tok, IclTask.builtin("antonym"), 500)


def test_vector_from_another_model_width_or_site(tiny):
    from probescope.steering import SteeringVector

    model, _ = tiny
    with pytest.raises(ValueError, match="residual width is 64"):
        icl.check_vector(model, torch.zeros(576), layer=1)
    with pytest.raises(ValueError, match="made on model 'smollm2-135m'"):
        icl.check_vector(model, SteeringVector({1: torch.ones(64)}, model_id="smollm2-135m"))
    with pytest.raises(ValueError, match="layers \\[1\\], not 3"):
        icl.check_vector(model, SteeringVector({1: torch.ones(64)}), layer=3)
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        icl.check_vector(model, torch.ones(64), layer=9)


def test_grid_batched_strengths_equal_separate_steered_runs(tiny):
    from probescope.steering import SteeringVector

    model, tok = tiny
    beh = icl.make_behaviour(tok, IclTask.builtin("antonym"), IclTask.builtin("uppercase"), 6, seed=0)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    g = icl.measure_grid(model, tok, beh, [0, 1], [-0.5, 0.0, 0.5], v, layer=1, batch_size=7)
    assert g.values.shape == (2, 3, 6)
    from probescope.steering.icl_tasks import encode_left

    ids, mask = encode_left(tok, beh.prompts(1))
    last = torch.zeros_like(mask, dtype=torch.bool)
    last[:, -1] = True
    a, w = torch.tensor(beh.answer_ids), torch.tensor(beh.wrong_ids)
    for j, m in enumerate([-0.5, 0.0, 0.5]):
        with torch.no_grad(), SteeringVector({1: v}).apply(model, multiplier=m, positions=last):
            lp = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)
                       ).logits[:, -1].log_softmax(-1)
        ref = (lp[torch.arange(6), a] - lp[torch.arange(6), w]).numpy()
        assert np.allclose(g.values[1, j], ref, atol=1e-4)
    s = icl.behaviour_scores(model, tok, beh, 1)  # strength 0 = the unsteered forward
    assert g.mean[1, 1] == pytest.approx(s["log_odds"], abs=1e-4)


def test_run_icl_tiny_job(tiny, tmp_path):
    from probescope.steering.icl_run import IclConfig, run_icl

    model, tok = tiny
    cfg = IclConfig(model="tiny-llama", shots="0,1,2,4", strengths="-1,0,1", n_queries=6, n_dev=4, n_boot=10,
                    layers="1,2", check_tasks="uppercase,antonym", out=str(tmp_path / "run"))
    res = run_icl(cfg, model, tok)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert res["vector"]["layer"] in (1, 2)
    assert np.array(res["grid"]["log_odds"]).shape == (4, 3)
    # a random tiny model learns nothing from examples: reported and skipped, and no fit without an effect
    assert all(not row.get("can_do") and "skipped" in row for row in res["tasks"].values())
    if res.get("fits") is None:
        assert "no measurable in-context effect" in res["effect"]["error"]
    else:
        assert set(res["fits"]) == {"published", "logistic"}


def test_config_errors():
    from probescope.steering.icl_run import IclConfig

    with pytest.raises(ValueError, match="--task 'sarcasm' is not one of .*antonym"):
        IclConfig(task="sarcasm")
    with pytest.raises(ValueError, match="--check-tasks 'antonym,sarcasm' \\(the value 'sarcasm'\\) is not one of"):
        IclConfig(check_tasks="antonym,sarcasm")
    with pytest.raises(ValueError, match="both 'antonym'"):
        IclConfig(task="antonym", contrast="antonym")
    with pytest.raises(ValueError, match="at least 8 cells"):
        IclConfig(shots="0,1", strengths="0,1")


def test_cli_has_icl():
    from typer.testing import CliRunner

    from probescope.cli import app

    out = CliRunner().invoke(app, ["steer", "icl", "--help"])
    assert out.exit_code == 0 and "--strengths" in out.output and "--json" in out.output


def test_head_search_finds_a_planted_head(tiny):
    """Scale one head's o_proj columns in a GQA tiny model (4 query / 2 kv heads): it dominates the last-token
    logits, so putting its clean mean output into the corrupted prompts has the largest indirect effect."""
    import copy

    from probescope.core.sites import head_weight
    from probescope.steering.fv import head_search, make_set
    from probescope.steering.icl_tasks import encode_left

    model, tok = tiny
    planted = copy.deepcopy(model)
    L, H = 3, 1  # the last block: nothing downstream mixes the planted head with others
    w, hd = head_weight(planted, L)
    with torch.no_grad():
        w[:, H * hd:(H + 1) * hd] *= 40.0
    s = make_set(tok, IclTask.builtin("antonym"), 6, 3, seed=0)
    ci, cm = encode_left(tok, s.clean)
    xi, xm = encode_left(tok, s.corrupt)
    # the "answer": the token the clean prompts favour on average (the planted head drives the last-token logits)
    with torch.no_grad():
        lg = planted(input_ids=ci, attention_mask=cm, position_ids=(cm.cumsum(1) - 1).clamp_min(0)).logits[:, -1]
    ans = [int(lg.log_softmax(-1).mean(0).argmax())] * ci.shape[0]
    hs = head_search(planted, ci, cm, xi, xm, ans, batch_size=16)
    assert hs.aie.shape == (4, 4)
    assert hs.top(1)[0][:2] == (L, H), hs.aie
    assert hs.aie[L, H] > 2 * np.sort(hs.aie.ravel())[-2]  # by a clear margin
    fv = hs.function_vector(1)
    assert torch.allclose(fv, hs.means[L, H])
    # screened: attribution ranks all 16 heads, the best 3 are measured exactly; the planted head stays on top
    sc = head_search(planted, ci, cm, xi, xm, ans, batch_size=16, screen=3)
    assert sc.exact.sum() == 3 and sc.exact[L, H]
    assert sc.top(1)[0][:2] == (L, H) and sc.aie[L, H] == pytest.approx(hs.aie[L, H], rel=1e-4)


def test_icl_summary_in_the_users_words():
    """#36: `steer icl` printed `flip error=0.34297911950614446 shots` and buried the function-vector rows: the
    summary rounds, names the interval, puts the tasks and vectors in a table and says the check in words."""
    from rich.console import Console

    import probescope.steering.cli as scli

    res = {"task": "antonym", "contrast": "uppercase", "model": "m", "vector": {"layer": 3}, "grid": {},
           "tasks": {"antonym": {"acc_0shot": 0.0, "acc_5shot": 0.77, "acc_fv": 0.05, "recovery_fv": 0.065,
                                 "acc_tv": 0.03, "recovery_tv": 0.039, "can_do": True},
                     "past": {"acc_0shot": 0.1, "acc_5shot": 0.15, "can_do": False, "skipped": "does not learn"}},
           "fits": {"published": {"heldout_r": 0.97512, "heldout_r2": 0.9461, "flip_error_mean": 0.34297911950614446}},
           "bootstrap": {"shots_per_strength": {"ci95": [0.2012, 0.8234]}},
           "conversion": {"shots_for_strength": {1.0: 0.4312}},
           "vector_to_icl": [{"strength": 1.5, "predicted_shots": 2.26, "shots_run": 2, "shots_log_odds": 8.38,
                              "vector_log_odds": 8.37, "gap": 0.01}]}
    con = Console(record=True, width=200)
    old, scli.console = scli.console, con
    try:
        scli._show_icl(res)
    finally:
        scli.console = old
    text = con.export_text()
    assert "0.34297911950614446" not in text and "within 0.34 shots" in text
    assert "strength 1 ≈ 0.43 shots (95% interval 0.20–0.82)" in text
    assert "0.05 (6%)" in text and "does not learn" in text        # the function-vector row, in the table
    assert "running 2 shots gives log-odds 8.38 vs the vector's 8.37" in text
