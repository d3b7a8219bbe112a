"""The correctness probe (Zhang et al. 2025) as an exit method: its labels, its fit, its CRC calibration, `exit eval`.

A synthetic collect plants the signal (the state at a check carries whether the forced answer there is correct),
so the probe must learn it, CRC must certify a finite τ, and the exit must save tokens at full agreement; a tiny-llama
chain checks the plumbing of `exit eval --correctness-probe` (metrics, by_group, summary, refusals).
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app
from probescope.exit.calibrate import calibrate, simulate
from probescope.exit.collect import Collected, row_checks
from probescope.exit.correctness import (check_examples, choose_correctness_probe, correctness_labels,
                                         correctness_traces, fit_correctness_probe)
from probescope.exit.evaluate import curve_answers

pytestmark = pytest.mark.usefixtures("one_thread")
LETTERS = "ABCD"
K, STEP, D, LAYER = 6, 5, 16, 3


def synthetic_collect(n: dict[str, int], seed: int = 0) -> Collected:
    """Problems whose forced answer is wrong at the first s checks and the final answer after (s random); the final
    answer is the gold one for 3 problems in 4. The state at check k is noise plus 6 × (forced answer correct)
    along the first coordinate: a probe that reads it knows when the forced answer is right."""
    rng = np.random.default_rng(seed)
    rows, states = [], []
    for split, count in n.items():
        for i in range(count):
            gold = LETTERS[rng.integers(4)]
            final = gold if rng.random() < 0.75 else LETTERS[(LETTERS.index(gold) + 1) % 4]
            wrong = [L for L in LETTERS if L not in (gold, final)]
            s = int(rng.integers(1, K))
            cuts = [STEP * (k + 1) for k in range(K)]
            ans = [wrong[k % len(wrong)] if k < s else final for k in range(K)]
            probs = [[0.9 if L == a else 0.1 / 3 for L in LETTERS] for a in ans]
            x = rng.normal(size=(STEP * K + 1, D)).astype(np.float32)
            for k, a in enumerate(ans):
                x[cuts[k] - 1, 0] += 6.0 * (a == gold)
            rows.append({"id": f"{split}-{i}", "split": split, "gold": gold, "final": final, "cut": STEP * K,
                         "group": "held-out" if i % 2 else "original", "checks": [[c, c - 1] for c in cuts],
                         "curve_cuts": [0] + cuts, "curve_probs": [[0.25] * 4] + probs})
            states.append(torch.from_numpy(x))
    acts = torch.stack(states).half()
    return Collected(rows, {LAYER: acts, LAYER + 1: torch.randn_like(acts.float()).half()},
                     torch.full((len(rows),), STEP * K + 1), {"config": {"stride": STEP}, "model_id": "synthetic"})


@pytest.fixture(scope="module")
def col():
    return synthetic_collect({"train": 60, "val": 120, "test": 60})


def test_labels_are_the_forced_answers_correctness(col):
    r = next(r for r in col.rows if r["final"] != r["gold"])  # a problem full reasoning gets wrong
    cuts = [c for c, _ in row_checks(col, r)]
    cur = curve_answers(r)
    assert correctness_labels(r, cuts) == [int(cur[c] == r["gold"]) for c in cuts]
    assert correctness_labels(r, cuts) == [0] * K  # its forced answers are never the gold one
    assert correctness_labels(r, cuts, "final") == [int(cur[c] == r["final"]) for c in cuts]
    assert correctness_labels(r, cuts, "final")[-1] == 1
    x, y = check_examples(col, col.split("train"), LAYER)
    assert x.shape == (60 * K, D) and len(y) == 60 * K
    # the state of each example is the activation the check reads (probe index c - 1)
    assert torch.equal(x[1], col.acts[LAYER][col.split("train")[0], 2 * STEP - 1].float())
    with pytest.raises(ValueError, match="label='right'"):
        correctness_labels(r, cuts, "right")


def test_the_correctness_probe_trains_calibrates_and_exits(col):
    probe, scores = choose_correctness_probe(col, [LAYER, LAYER + 1], seed=0)
    assert probe.kind == "mlp" and probe.classes == [0, 1]
    assert probe.layer == LAYER and scores[str(LAYER)] < scores[str(LAYER + 1)]  # the layer with the signal wins
    val, test = col.split("val"), col.split("test")
    x, y = check_examples(col, test, LAYER)
    acc = float(((probe.predict_proba(x) > 0.5).long() == torch.tensor(y)).float().mean())
    assert acc > 0.95, acc  # the planted signal separates the classes (noise sd 1, shift 6)
    cal = calibrate(correctness_traces(col, val, probe), 0.99, "crc")
    assert cal.feasible and cal.n == 120 and cal.risk_bound <= 0.01 and set(cal.groups) == {"original", "held-out"}
    trs = correctness_traces(col, test, probe)
    out = simulate(trs, cal.tau)
    # an exit answers the forced answer at its cut; on problems full reasoning gets right that is the final answer
    assert out.tokens_saved > 0.2 and out.agreement >= 0.95, (out.tokens_saved, out.agreement)
    for t, c, a in zip(trs, out.cuts, out.answers):
        assert a == (curve_answers(next(r for r in col.rows if r["id"] == t.id))[int(c)] if c < t.full else t.final)
    # problems whose full answer is wrong: the forced answers are never correct, so a good probe rarely exits there
    wrong = [k for k, t in enumerate(trs) if t.final != t.gold]
    assert np.mean([out.cuts[k] == trs[k].full for k in wrong]) > 0.8


def test_too_few_train_checks_and_missing_layers_are_refused():
    small = synthetic_collect({"train": 1, "val": 4, "test": 2})
    with pytest.raises(ValueError, match="--n-train"):
        fit_correctness_probe(small, LAYER)
    with pytest.raises(ValueError, match="--correctness-layers 9: layer 9 was not collected"):
        fit_correctness_probe(small, 9)


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_exit_eval_correctness_probe_on_tiny_llama(tmp_path):
    """`exit eval --correctness-probe`: the method in metrics (tau, layer, label, accuracy interval), its calibration
    on val, per family group, on the Pareto page, and in the printed table; a layer not collected is refused."""
    r = CliRunner()
    col, probe, ev = (str(tmp_path / n) for n in ("col", "probe", "eval"))
    _json(r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--out", col, "--n-train", "8", "--n-val", "6",
                         "--n-test", "4", "--n-test-held-out", "3", "--layers", "1,2", "--max-new-tokens", "10",
                         "--boundary", "every:2", "--batch-size", "8", "--json"]))
    _json(r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "2", "--n-heads", "2",
                         "--json"]))
    args = ["exit", "eval", "--collect", col, "--probe", probe, "--out", ev, "--no-live", "--rule", "empirical",
            "--target", "0.5", "--correctness-probe"]
    m = _json(r.invoke(app, args + ["--json"]))
    c = m["methods"]["correctness_probe"]
    assert c["n"] == 7 and c["label"] == "gold" and c["layer"] in (1, 2) and len(c["accuracy_ci95"]) == 2
    assert c["accuracy"] - c["accuracy_full"] == pytest.approx((c["gained"] - c["lost"]) / 7, abs=1e-3)
    assert m["calibration"]["correctness_probe"]["n"] == 6  # τ from the val problems only
    assert m["correctness_probe"]["layer"] == c["layer"] and set(m["correctness_probe"]["val_log_loss"]) == {"1", "2"}
    assert {g: "correctness_probe" in x for g, x in m["by_group"].items()} == {"original": True, "held-out": True}
    assert len(m["pareto"]["correctness_probe"]["tokens_saved"]) == len(m["pareto"]["taus"])
    res = r.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "correct" in res.output and "probe" in res.output
    assert " ".join(res.output.split()).count("correctness probe saves") == 2  # on each family group's line
    off = [a if a != ev else ev + "-off" for a in args[:-1]]
    m2 = _json(r.invoke(app, off + ["--json"]))  # off by default: no such method
    assert "correctness_probe" not in m2["methods"] and "correctness_probe" not in m2["calibration"]
    res = r.invoke(app, [a if a != ev else ev + "-bad" for a in args] + ["--correctness-layers", "5"])
    assert res.exit_code == 2 and "--correctness-layers 5: layer 5 was not collected" in " ".join(res.output.split())
    assert not (tmp_path / "eval-bad").exists()  # refused before the run folder is made
