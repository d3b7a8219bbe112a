"""The pipes-vs-water table's ICL rows (issue 18, item 4), fast: end to end on tiny-llama at toy sizes, bad input,
the CLI command."""

from __future__ import annotations

import json

import pytest

from probescope.steering.jobs import IclCompareConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = dict(model="tiny-llama", n_shots=2, n_examples=6, n_queries=4, n_neutral=2, fv_top_k=2, fv_screen=4,
           lora_steps=2, lora_batch=4)


def test_comparison_end_to_end(tmp_path):
    from probescope.core.models import load_model
    from probescope.steering.compare_icl import COLUMNS, ROWS, run_icl_comparison

    model, tok = load_model("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    res = run_icl_comparison(IclCompareConfig(**TOY, out=str(tmp_path / "run")), model, tok)
    rows = res["rows"]
    assert list(rows) == list(ROWS)
    for name, r in rows.items():
        missing = [c for c in COLUMNS if c not in r]
        assert not missing, f"{name} lacks {missing}"
        assert 0.0 <= r["accuracy"] <= 1.0 and r["kl"] >= 0 and r["ppl"] > 0
    assert rows["n_shot"]["extra_prompt_tokens"] > 0
    for name in ("zero_shot", "function_vector", "task_vector", "lora"):
        assert rows[name]["extra_prompt_tokens"] == 0
    assert rows["zero_shot"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert rows["n_shot"]["kl"] > 0 and rows["lora"]["kl"] > 0
    assert rows["function_vector"]["extra_params"] == rows["task_vector"]["extra_params"] == 64
    assert rows["lora"]["extra_params"] > 0 and rows["lora"]["steps"] == TOY["lora_steps"]
    assert rows["task_vector"]["kl_every_position"] >= 0
    # held-out queries share no word with the examples every method learns from
    words = {w for p in res["examples"] for w in p}
    assert not words & {w for p in res["held_out"] for w in p}
    # the run folder: metrics with a table for the report page, table.md; the model is left as it was
    run = tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    table = next(p for p in m["plots"] if p["type"] == "table")
    assert len(table["rows"]) == 5 and all(len(r) == len(table["columns"]) for r in table["rows"])
    assert (run / "table.md").read_text().count("\n") == 7
    assert (run / "report.html").exists()
    after = model.state_dict()
    assert set(after) == set(before)
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-5
    assert [p.requires_grad for p in model.parameters()] == grads and not model.training


@pytest.mark.parametrize("kw, match", [
    (dict(task="synonym"), r"--task 'synonym' is not one of .*antonym"),
    (dict(n_shots=0), r"--n-shots 0 is out of range: it must be ≥ 1 \(N: demonstrations"),
    (dict(n_shots=5, n_examples=5), r"use --n-examples 6 or more"),
    (dict(n_queries=1), r"--n-queries 1 is out of range: it must be ≥ 2 \(held-out queries"),
    (dict(lora_steps=0), r"--lora-steps 0 is out of range: it must be ≥ 1"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        IclCompareConfig(**kw)


def test_too_many_queries_for_the_task():
    from probescope.steering.compare_icl import run_icl_comparison

    with pytest.raises(ValueError, match=r"task 'capital' has 50 pairs: .*use fewer --n-examples or --n-queries"):
        run_icl_comparison(IclCompareConfig(model="tiny-llama", task="capital", n_examples=30, n_queries=30))


def test_cli_help_and_toy_run(tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    runner = CliRunner()
    h = runner.invoke(app, ["steer", "compare-icl", "--help"])
    assert h.exit_code == 0
    for opt in ("--task", "--n-shots", "--n-examples", "--lora-steps", "--json"):
        assert opt in h.output
    args = ["steer", "compare-icl", "--out", str(tmp_path / "cli"), "--json"]
    for k, v in TOY.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["rows"]) == {"zero_shot", "n_shot", "function_vector", "task_vector", "lora"}
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["kind"] == "steering-compare-icl"
    bad = runner.invoke(app, ["steer", "compare-icl", "--n-shots", "0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--n-shots 0 is out of range: it must be ≥ 1" in bad.output


def test_sentiment_table_shares_the_row_measurement(tmp_path):
    """`compare.run_comparison` (the sentiment rows) goes through the same `measure_row`: every row keeps its columns."""
    from probescope.steering.compare import run_comparison, table_markdown
    from probescope.steering.jobs import CompareConfig

    cfg = CompareConfig(model="tiny-llama", layer=1, n_pairs=4, n_shots=1, n_prompts=2, n_neutral=2, max_new_tokens=4,
                        lora_steps=1, lora_examples=4, lora_batch=2, out=str(tmp_path / "c"))
    rows = run_comparison(cfg)["rows"]
    assert list(rows) == ["baseline", "steering", "few-shot", "lora"]
    for r in rows.values():
        for k in ("sentiment", "kl", "ppl", "make_seconds", "generate_seconds", "fixed_length_generate_seconds",
                  "generate_time_ratio", "extra_prompt_tokens", "extra_params", "samples", "effect"):
            assert k in r
    assert rows["few-shot"]["extra_prompt_tokens"] > 0 and rows["steering"]["kl"] > 0
    assert table_markdown(rows).count("\n") == 5
