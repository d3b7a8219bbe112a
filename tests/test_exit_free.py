"""Free-form answers on tiny-llama: normalisation, the answer-stability probe trains, the loop exits with the forced
answer, calibration picks τ, eval runs the baselines; the CLI path is `exit collect --answers free`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app
from probescope.core.models import load_model
from probescope.exit.answer import cue_ids, encode_prefix
from probescope.exit.free import STABILITY_CLASSES, forced_free_answers, normalize_answer, settle_confidence
from probescope.exit.generate import ExitPolicy, generate_with_exit
from probescope.probes.attention import AttentionProbe
from probescope.tasks import mcq

pytestmark = pytest.mark.usefixtures("one_thread")


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("raw,norm", [(" 42.\n(A) more", "42"), ("1,200.0", "1200"), ("+7", "7"), ("0.50", "0.5"),
                                      ("Paris!", "paris"), ("(12)", "12"), ("", ""), ("twelve apples.", "twelve apples")])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_settle_confidence_counts_repeats():
    assert np.allclose(settle_confidence(["1", "2", "2", "2", "3"]), [0, 0, 0.5, 2 / 3, 0])


def test_free_problems_have_no_options():
    p = mcq.as_free(mcq.generate("val", 1, kinds=("arith",))[0])
    assert p.free and p.letter == "" and "(A)" not in mcq.user_text(p) and mcq.trace(p).endswith(f"Answer: {p.result}")


def _stability_probe(layer: int = 2, d: int = 64) -> AttentionProbe:
    g = torch.Generator().manual_seed(0)
    p = AttentionProbe(n_heads=2)
    from probescope.probes.train import FitConfig

    p.fit(torch.randn(16, 5, d, generator=g), [STABILITY_CLASSES[i % 2] for i in range(16)],
          config=FitConfig(weight_decay=0.0, max_epochs=2), classes=list(STABILITY_CLASSES))
    p.layer, p.model_id = layer, "tiny-llama"
    return p


def test_loop_exits_with_the_forced_free_answer():
    model, tok = load_model("tiny-llama")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                     add_generation_prompt=True)
    pol = ExitPolicy(kind="probe", tau=0.0, boundary="every", every=4, stable_class=1)
    r = generate_with_exit(model, tok, [prompt], _stability_probe(), pol, max_new_tokens=12, answers="free").rows[0]
    assert r.stop == "exit" and r.cut == 4 and r.probe_trace.shape[1] == 2
    ref = forced_free_answers(model, tok, [encode_prefix(tok, prompt)[0] + r.reasoning_ids + cue_ids(tok, "\nAnswer:")])
    assert r.answer == ref[0]
    with pytest.raises(ValueError, match="use mode='forced'"):
        generate_with_exit(model, tok, [prompt], _stability_probe(), ExitPolicy(kind="probe", mode="probe",
                                                                                stable_class=1), answers="free")
    with pytest.raises(ValueError, match="classes"):  # a letter probe is not a stability probe
        from test_exit import _probe

        generate_with_exit(model, tok, [prompt], _probe(2, 64), pol, answers="free")


def test_free_chain_collect_train_calibrate_eval(tmp_path):
    r = CliRunner()
    col, probe, ev = (str(tmp_path / n) for n in ("col", "probe", "eval"))
    out = _json(r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--answers", "free", "--out", col,
                               "--n-train", "8", "--n-val", "6", "--n-test", "4", "--layers", "1,2",
                               "--max-new-tokens", "10", "--stride", "4", "--boundary", "every:3", "--json"]))
    assert {k: v["n"] for k, v in out["splits"].items()} == {"train": 8, "val": 6, "test": 4}
    meta = json.loads((tmp_path / "col" / "collect.json").read_text())
    assert meta["answers"] == "free" and meta["format"]["answer_cue"] == "\nAnswer:"
    for row in meta["rows"]:
        assert "(A)" not in row["prompt"] and row["gold"].isdigit()
        assert row["curve_answers"][-1] == row["final"]  # the curve's last point is the final answer
        assert [c for c, _ in row["checks"]] == list(range(3, row["cut"] + 1, 3))
    out = _json(r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "2", "--n-heads", "2",
                               "--json"]))
    assert out["chosen"] in (1, 2)
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["classes"] == list(STABILITY_CLASSES)
    out = _json(r.invoke(app, ["exit", "calibrate", "--collect", col, "--probe", probe, "--rule", "empirical",
                               "--target", "0.5", "--json"]))
    assert out["n"] == 6 and (out["tau"] is None or 0 <= out["tau"] <= 1)
    out = _json(r.invoke(app, ["exit", "eval", "--collect", col, "--probe", probe, "--out", ev, "--rule", "empirical",
                               "--target", "0.5", "--max-new-tokens", "10", "--json"]))
    assert {"probe", "forced_answer", "budget", "oracle", "full"} <= set(out["methods"])
    assert out["live"]["n"] == 4 and out["methods"]["oracle"]["agreement"] == 1.0
    assert (tmp_path / "eval" / "report.html").exists()
    # `exit run` on a question without options: the stability probe, the exit, the model's own free answer
    run = str(tmp_path / "run")
    out = _json(r.invoke(app, ["exit", "run", "What is 2 + 3?", "--model", "tiny-llama", "--probe", probe, "--tau", "0",
                               "--boundary", "every:3", "--max-new-tokens", "10", "--out", run, "--json"]))
    assert out["answers"] == "free" and out["stop"] == "exit" and out["reasoning_tokens"] == 3
    assert out["answer_probs"] == {} and isinstance(out["answer"], str)
    assert "P(stable)" in (tmp_path / "run" / "report.html").read_text()
    res = r.invoke(app, ["exit", "run", "What is 2 + 3? (A) 4 (B) 5 (C) 6 (D) 7", "--model", "tiny-llama", "--probe",
                         probe, "--out", str(tmp_path / "run2")])
    assert res.exit_code != 0 and "needs ['A', 'B', 'C', 'D']" in res.output and "--answers free" in res.output


def test_free_rows_from_a_file(tmp_path):
    from probescope.tasks.problem_file import read_problem_file

    p = tmp_path / "f.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(12)))
    s = read_problem_file(p, 8, 2, 2, answers="free")
    assert all(q.free and q.result.isdigit() for v in s.values() for q in v)
    p.write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n")
    with pytest.raises(ValueError, match="row 1 has no answer: give the final answer's text"):
        read_problem_file(p, 1, 0, 0, answers="free")
    p.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="for free-form answers use --answers free"):
        read_problem_file(p, 1, 0, 0)
