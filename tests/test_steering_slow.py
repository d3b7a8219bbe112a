"""Steering on the real default model (SmolLM2-135M): make, apply, save, export, eval, in under a minute."""

import json

import pytest
import torch

from probescope.steering import SteeringVector, read_gguf
from probescope.steering.evaluate import EvalConfig, behaviour, generate, run_eval
from probescope.steering.pairs import eval_prompts, sentiment_pairs


@pytest.mark.slow
def test_smollm2_sentiment_vector(smollm2, tmp_path):
    model, tok = smollm2
    torch.set_num_threads(1)
    vec = SteeringVector.train(model, tok, sentiment_pairs(tok, 16), [6, 10])
    assert vec.meta["pair_separation"][10] == 1.0
    prompts = eval_prompts(tok, 4)
    with vec.apply(model, multiplier=-1.0, layers=[6]):
        neg = behaviour(generate(model, tok, prompts, 16))
    with vec.apply(model, multiplier=1.0, layers=[10], positions="generated"):
        pos = behaviour(generate(model, tok, prompts, 16))
    assert pos["sentiment"] > neg["sentiment"]
    folder = vec.save(tmp_path / "vec")
    g = read_gguf(SteeringVector.load(folder).export_gguf(tmp_path / "v.gguf"))
    assert g.layers == [6, 10] and g.meta["model_type"] == "llama"
    run_eval(vec, model, tok, str(tmp_path / "ev"),
             EvalConfig(multipliers=(0.0, 1.0), n_prompts=2, n_neutral=3, max_new_tokens=8))
    series = json.loads((tmp_path / "ev" / "metrics.json").read_text())["series"]
    assert series["kl"][0] < 1e-6 < series["kl"][1]
