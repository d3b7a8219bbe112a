"""The answer at the token budget (#33): the rules, the probe read teacher-forced, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probescope.core.models import load_model
from probescope.exit.at_budget import AT_BUDGET, budget_letters, budget_prior, probe_beliefs
from probescope.exit.generate import ExitPolicy, generate_with_exit
from test_exit import _probe  # a small trained attention probe on tiny-llama's width

LETTERS = ["A", "B", "C", "D"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_model("tiny-llama")


def test_the_rules():
    forced = torch.tensor([[0.1, 0.1, 0.2, 0.6], [0.4, 0.3, 0.2, 0.1]])
    probe = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    prior = torch.tensor([0.1, 0.1, 0.2, 0.6])
    assert budget_letters("forced", forced) == ["D", "A"]
    assert budget_letters("probe", forced, probe) == ["A", "D"]
    assert budget_letters("product", forced, probe) == ["D", "D"]  # A 0.05 < D 0.06; A 0.04 < D 0.07
    assert budget_letters("calibrated", forced, prior=prior) == ["A", "A"]  # a tie goes to the first letter
    assert set(AT_BUDGET) == {"forced", "calibrated", "probe", "product"}
    assert np.allclose(budget_prior(forced).numpy(), [0.25, 0.2, 0.2, 0.35])


def test_bad_input_names_the_fix():
    f = torch.full((1, 4), 0.25)
    with pytest.raises(ValueError, match="unknown: use one of forced"):
        budget_letters("vote", f)
    with pytest.raises(ValueError, match="needs the probe's belief"):
        budget_letters("probe", f)
    with pytest.raises(ValueError, match="needs the letter prior"):
        budget_letters("calibrated", f)
    with pytest.raises(ValueError, match="share > 0"):
        budget_letters("calibrated", f, prior=[0.5, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="same letters"):
        budget_letters("product", f, torch.full((1, 3), 1 / 3))


def test_probe_beliefs_equal_the_live_probe_trace(tiny):
    model, tok = tiny
    probe = _probe(2, 64)
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
               for t in ("What is 2+2?", "Name three colours.")]
    res = generate_with_exit(model, tok, prompts, probe, ExitPolicy(kind="never"), max_new_tokens=16, batch_size=2)
    for p, r in zip(prompts, res.rows):
        b = probe_beliefs(model, tok, probe, p, tok.decode(r.fed_ids))
        assert b.shape == r.probe_trace.shape
        assert torch.allclose(b, r.probe_trace, atol=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        probe_beliefs(model, tok, probe, prompts[0], "")


def test_the_engine_answers_by_the_policy_rule_where_the_budget_runs_out(tiny):
    model, tok = tiny
    probe = _probe(2, 64)
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
               for t in ("What is 2+2?", "Name three colours.", "x")]
    kw = dict(max_new_tokens=12, batch_size=3)
    runs = {rule: generate_with_exit(model, tok, prompts, probe, ExitPolicy(kind="never", at_budget=rule), **kw)
            for rule in AT_BUDGET}
    forced = runs["forced"].rows
    assert all(r.stop == "max_tokens" for r in forced)  # tiny-llama never writes an answer line in 12 tokens
    F = torch.tensor([r.answer_probs for r in forced])
    B = torch.stack([r.probe_trace[-1] for r in forced])
    from probescope.exit.answer import letter_prior

    prior = letter_prior(model, tok)
    for rule, res in runs.items():
        assert [r.fed_ids for r in res.rows] == [r.fed_ids for r in forced]  # the rule changes only the answer
        assert [r.answer for r in res.rows] == budget_letters(rule, F, B, prior)
        assert all(abs(sum(r.answer_probs) - 1) < 1e-5 for r in res.rows)


def test_the_engine_refuses_an_at_budget_rule_it_cannot_apply(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="pass a probe"):
        generate_with_exit(model, tok, ["x"], None, ExitPolicy(kind="never", at_budget="probe"), max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown: use one of"):
        generate_with_exit(model, tok, ["x"], None, ExitPolicy(kind="never", at_budget="vote"), max_new_tokens=2)
    with pytest.raises(ValueError, match="free-form"):
        generate_with_exit(model, tok, ["x"], None, ExitPolicy(kind="never", at_budget="calibrated", answers="free"),
                           max_new_tokens=2)


def test_exit_run_at_budget_on_the_cli(tmp_path):
    """`exit run --at-budget probe`: where the budget runs out (τ = 1 never fires), the answer is the probe's belief
    and the summary says so; a free-form question refuses the option before any work."""
    from typer.testing import CliRunner

    from probescope.cli import app
    from probescope.core.io import read_json
    from probescope.exit.live import AT_BUDGET_RULES

    assert AT_BUDGET_RULES == tuple(AT_BUDGET)
    _probe(2, 64).save(tmp_path / "probe")
    q = "Which number is largest?\n(A) 1\n(B) 2\n(C) 3\n(D) 4"
    args = ["exit", "run", q, "--model", "tiny-llama", "--probe", str(tmp_path / "probe"), "--max-new-tokens", "8",
            "--tau", "1", "--quiet"]
    res = CliRunner().invoke(app, [*args, "--at-budget", "probe", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    m = read_json(tmp_path / "a" / "metrics.json")
    assert m["stop"] == "max_tokens" and m["at_budget"] == "probe"
    assert m["answer"] == max(m["belief"], key=m["belief"].get)
    assert "the probe's belief where the budget ran out" in m["summary"]
    res = CliRunner().invoke(app, ["exit", "run", "What is 2+2?", "--model", "tiny-llama", "--at-budget", "probe"])
    assert res.exit_code != 0 and "reads option letters" in res.output


def test_the_reasoner_evaluation_answers_by_the_rule_where_the_budget_runs_out(tiny, monkeypatch):
    import probescope.exit.mcq_eval as mcq_eval
    from probescope.exit.answer import Generation
    from probescope.tasks import mcq

    model, tok = tiny
    probe = _probe(2, 64)
    problems = mcq.generate("test", 3, seed=0)
    texts = ["The sum is 7 and", "", "We add 3 and 4\nAnswer: (B)"]  # budget, budget with nothing read, own answer
    monkeypatch.setattr(mcq_eval, "generate_reasoning", lambda m, t, prompts, *a, **k: [
        Generation(x, x.split("\nAnswer:")[0], "\nAnswer:" in x, len(x)) for x in texts[: len(prompts)]])
    kw = dict(batch_size=3, max_new_tokens=8, settle_stride=100, quiet=True)
    base = mcq_eval.evaluate_mcq(model, tok, problems, **kw)
    rep = mcq_eval.evaluate_mcq(model, tok, problems, **kw, at_budget="probe", probe=probe)
    assert rep["at_budget"] == "probe" and base["at_budget"] == "forced"
    a, b = base["rows"], rep["rows"]
    assert [r["reached_answer"] for r in b] == [False, False, True] and all("forced_pred" not in r for r in a)
    belief = probe_beliefs(model, tok, probe, mcq.build_prompt(problems[0], tok), texts[0])[-1]
    assert b[0]["pred"] == LETTERS[int(belief.argmax())] and b[0]["forced_pred"] == a[0]["pred"]
    assert b[1]["pred"] == b[1]["forced_pred"] == a[1]["pred"]  # no reasoning tokens: nothing for the probe to read
    assert b[2]["pred"] == a[2]["pred"] and "forced_pred" not in b[2]  # its own answer line: untouched
    with pytest.raises(ValueError, match="reads the exit probe: pass probe="):
        mcq_eval.evaluate_mcq(model, tok, problems, **kw, at_budget="product")
