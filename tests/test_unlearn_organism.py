"""The fictitious-entity organism on a tiny model (fast): teaching runs on the top blocks and lowers the loss, the
files split entities cleanly between forget and retain, the saved model loads, a finished run is reused, and bad
input or too little recall fails with a clear error and no model written. (Recall ≥ 0.9 needs a real model: a
random tiny model behind a frozen unembedding cannot reach it; the SmolLM2 run is in bench/unlearn.py and
tests/test_unlearn_slow.py.)"""

import json

import pytest
import torch

from probescope.unlearn.organism import EntityOrganismConfig, run_entity_organism

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out, **kw):
    base = dict(model="tiny-llama", n_entities=12, attributes="capital,animal", forget_share=0.25, n_retain_eval=6,
                from_layer=1, r=8, lr=1e-2, epochs=4, batch_size=8, min_recall=0.0, general_docs=8, general_batch=2,
                out=str(out))
    base.update(kw)
    return EntityOrganismConfig(**base)


def test_organism_teaches_and_writes_the_split(tmp_path):
    from probescope import load_model
    from probescope.unlearn import read_subject

    cfg = _cfg(tmp_path / "org")
    m = run_entity_organism(cfg, quiet=True)
    assert m["n_facts"] == 24 and m["n_entities"] == 12
    hist = m["training"]["history"]
    assert len(hist) == 4 and hist[-1]["loss"] < hist[0]["loss"]  # the LoRA learns something
    assert 0 <= m["before"]["acc"] <= 1 and m["after"]["n"] == 24
    assert m["before"]["utility"]["ppl"] > 0 and m["after"]["utility"]["ppl"] > 0  # general text, before and after
    forget = [json.loads(x) for x in (tmp_path / "org/forget.jsonl").read_text().splitlines()]
    retain = (tmp_path / "org/retain.jsonl").read_text().splitlines()
    assert len(forget) == 3 * 2 and len(retain) == 9 * 2  # 3 of 12 entities forgotten, 2 facts each
    f_ents = {r["key"].split(":")[0] for r in forget}
    assert f_ents == set(m["forget_entities"])
    assert not any(e in json.loads(t)["text"] for t in retain for e in f_ents)  # no entity on both sides
    texts, items = read_subject(tmp_path / "org/forget.jsonl")
    assert len(items) == 6 and all(len(it.choices()) == 4 for it in items)
    _, rev = read_subject(tmp_path / "org/retain_eval.jsonl")
    assert len(rev) == 6 and not {it.key.split(":")[0] for it in rev} & f_ents
    # the saved model is the taught one: it loads and differs from the base
    taught, tok = load_model(str(tmp_path / "org/model"))
    base, _ = load_model("tiny-llama")
    ids = tok("The capital of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (taught(ids).logits - base(ids).logits).abs().max() > 1e-4
    assert (tmp_path / "org/report.html").exists()
    # the same config again: reused, not retrained
    again = run_entity_organism(cfg, quiet=True)
    assert again["training"]["train_seconds"] == m["training"]["train_seconds"]


def test_general_text_term_is_kl_to_the_untaught_model(tmp_path):
    """The KL reference is the model with the adapter off: with a learning rate too small to move it, the KL term is
    zero (to 1e-6), while the LM-loss variant is a cross-entropy of several nats on the same documents."""
    kl = run_entity_organism(_cfg(tmp_path / "kl", epochs=1, lr=1e-12), quiet=True)["training"]["history"][0]
    lm = run_entity_organism(_cfg(tmp_path / "lm", epochs=1, lr=1e-12, general_loss="lm"),
                             quiet=True)["training"]["history"][0]
    assert abs(kl["general_kl"]) < 1e-6 and lm["general_lm"] > 1.0


def test_too_little_recall_fails_without_writing_a_model(tmp_path):
    with pytest.raises(ValueError, match="--min-recall"):  # a refusal with its fix, not an internal error (#36)
        run_entity_organism(_cfg(tmp_path / "org", epochs=1, min_recall=0.99), quiet=True)
    assert not (tmp_path / "org/model").exists() and not (tmp_path / "org/forget.jsonl").exists()


@pytest.mark.parametrize("kw, match", [
    ({"attributes": "capital,height"}, r"--attributes 'capital,height' \(the value 'height'\) is not one of"),
    ({"attributes": ","}, r"--attributes ',' (is empty|names no attribute): use any of"),
    ({"forget_share": 1.0}, r"--forget-share 1.0 is out of range: it must be > 0 and < 1"),
    ({"n_entities": 3}, r"--n-entities 3 is out of range: it must be ≥ 8"),
    ({"lr": float("nan")}, r"--lr nan: nan is not a finite number"), ({"epochs": 0}, r"--epochs 0 is out of range"),
    ({"general_docs": 500}, r"--general-docs 500 is out of range: it must be between 0 and 200"),
    ({"general_loss": "mse"}, r"--general-loss 'mse' is not one of kl, lm"),
    ({"general_weight": -1.0}, r"--general-weight -1.0 is out of range: it must be ≥ 0")])
def test_bad_config_is_refused(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **kw)


def test_layer_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="--from-layer 9 is out of range"):
        run_entity_organism(_cfg(tmp_path / "org", from_layer=9), quiet=True)


def test_cli_organism(tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    out = tmp_path / "org"
    r = CliRunner().invoke(app, ["unlearn", "organism", "--model", "tiny-llama", "--n-entities", "8",
                                 "--attributes", "capital", "--from-layer", "1", "--epochs", "1", "--batch-size", "8",
                                 "--min-recall", "0", "--forget-share", "0.25", "--n-retain-eval", "2",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "forget.jsonl").exists() and (out / "model").exists()
    r = CliRunner().invoke(app, ["unlearn", "organism", "--model", "tiny-llama", "--attributes", "wings",
                                 "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "wings" in r.output
