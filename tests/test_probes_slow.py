"""Real model: a probe on SmolLM2-135M for a built-in task, end to end (< 60 s)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.mark.slow
def test_smollm2_sentiment_probe(tmp_path):
    from probescope import load_model
    from probescope.probes import Acts, FitConfig, LinearProbe, featurize, load_probe, metrics
    from probescope.probes.tasks import make_task

    model, tok = load_model("smollm2-135m")
    ds = make_task("sentiment", n_per_domain=100, seed=0).subset(domain="template")
    acts = featurize(model, tok, ds.texts, [10], quiet=True)[10]
    tr = [i for i, s in enumerate(ds.splits) if s == "train"]
    te = [i for i, s in enumerate(ds.splits) if s == "test"]
    y = torch.tensor(ds.labels)
    probe = LinearProbe("mean").fit(acts[tr], y[tr])
    assert probe.model_id == "smollm2-135m" and probe.layer == 10 and probe.d_model == 576
    auroc = metrics.auroc(probe.predict_proba(acts[te]), y[te])
    assert auroc > 0.9, auroc  # adjectives of clear polarity: a real model separates them
    probe.save(tmp_path / "p")
    back = load_probe(tmp_path / "p")
    torch.testing.assert_close(back.predict_proba(acts[te]), probe.predict_proba(acts[te]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="model 'smollm2-135m'"):
        back.predict_proba(Acts(acts.x[te], acts.mask[te], "tiny-llama", 10))
    pref = back.predict_prefixes(acts[te])
    torch.testing.assert_close(pref[:, -1], back.predict_proba(acts[te]), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_sweep_and_shift_on_smollm2_from_the_cli(tmp_path):
    """`probe sweep` and `probe shift` on the real model: their tables (metrics.json) and pages."""
    import json

    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    common = ["--model", "smollm2-135m", "--task", "truth", "--n", "120", "--max-epochs", "20"]
    res = r.invoke(app, ["probe", "sweep", *common, "--layers", "4,11", "--kinds", "linear-last,attention",
                         "--out", str(tmp_path / "sweep"), "--json"])
    assert res.exit_code == 0, res.output
    sw = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(sw["rows"]) == 4 and set(sw["best"]) == {"linear-last", "attention"}
    assert all(0.0 <= row["test"]["auroc"] <= 1.0 for row in sw["rows"])
    assert "sweep.svg" in (tmp_path / "sweep" / "report.html").read_text() or "<svg" in (tmp_path / "sweep" / "report.html").read_text()
    res = r.invoke(app, ["probe", "shift", *common, "--layer", "11", "--kinds", "linear-mean,linear-last,mlp,attention",
                         "--out", str(tmp_path / "shift"), "--json"])
    assert res.exit_code == 0, res.output
    sh = json.loads(res.stdout.strip().splitlines()[-1])
    assert [row["kind"] for row in sh["rows"]] == ["linear-mean", "linear-last", "mlp", "attention"]
    assert (sh["train_domain"], sh["eval_domain"]) == ("affirmative", "negated")
    assert "AUROC: trained on affirmative" in (tmp_path / "shift" / "report.html").read_text()
