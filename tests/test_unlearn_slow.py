"""Unlearning on SmolLM2-135M (slow, runs in CI): RMU removes held-out country capitals, keeps antonyms, and the
one-direction ablation brings part of it back (the audit runs and reports it)."""

import json

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_rmu_on_smollm2_forgets_capitals_and_keeps_antonyms(tmp_path):
    from probescope import load_model
    from probescope.unlearn import AuditConfig, UnlearnConfig, UnlearnRunConfig, run_audit, run_unlearn

    base, tok = load_model("smollm2-135m")
    model, _ = load_model("smollm2-135m")
    cfg = UnlearnRunConfig(n_facts=40, n_eval=12, utility_docs=4, out=str(tmp_path / "rmu"),
                           unlearn=UnlearnConfig(method="rmu", layer=7, steps=60, lr=2e-3, batch_size=4, seed=0))
    m = run_unlearn(cfg, model=model, tok=tok, quiet=True)
    b, a = m["before"], m["after"]
    assert b["forget"]["acc"] == 1.0  # known_only: the held-out facts are ones the model answers
    assert 80 < m["median_token_norm"] < 160 and m["site"] == "resid_post.7"  # position 0 masked (with it ≈ 180)
    assert a["forget"]["acc"] <= 0.5, a["forget"]  # 12 facts, chance 0.25
    assert a["retain"]["acc"] >= b["retain"]["acc"] - 0.1, (b["retain"], a["retain"])
    assert a["utility"]["ppl"] < 1.2 * b["utility"]["ppl"]
    res = run_audit(AuditConfig(run=cfg.out, attacks=("direction",), spans=(1,)), base=base, tok=tok, quiet=True)
    row = res["direction"]["rows"][0]
    assert row["sites"] == ["resid_post.8"] and 0.0 <= row["acc"] <= 1.0
    saved = json.loads((tmp_path / "rmu" / "audit.json").read_text())
    assert saved["site"] == "resid_post.7"


def test_entity_organism_on_smollm2_learns_its_facts(tmp_path):
    """48 made-up facts (24 entities × capital, animal) taught by LoRA on blocks 20-29: 4-way recall goes from about
    chance to ≥ 0.9, and the forget/retain files split the entities."""
    from probescope.unlearn import EntityOrganismConfig, run_entity_organism

    cfg = EntityOrganismConfig(n_entities=24, attributes="capital,animal", from_layer=20, epochs=20, lr=3e-3,
                               batch_size=16, forget_share=0.25, n_retain_eval=12, out=str(tmp_path / "org"))
    m = run_entity_organism(cfg, quiet=True)
    assert m["before"]["acc"] <= 0.5, m["before"]  # it never knew them (chance 0.25)
    assert m["after"]["acc"] >= 0.9 and m["memorized"], m["after"]
    assert m["n_forget_facts"] == 12 and m["n_retain_facts"] == 36
    assert (tmp_path / "org/model/model.safetensors").exists()
