"""The shipped smollm2-135m-reasoner answers held-out problems above chance (slow: real model)."""

import pytest

from probescope.core.models.reasoner import ASSET_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ASSET_DIR / "adapter_model.safetensors").exists(), reason="adapter not built"),
]


def test_reasoner_beats_chance_on_held_out():
    from probescope.exit.answer import forced_answer, generate_reasoning
    from probescope.core.models import load_model
    from probescope.tasks import mcq

    model, tok = load_model("smollm2-135m-reasoner")
    assert not hasattr(model, "peft_config")  # merged: a plain HF model
    problems = mcq.generate("test", 8, seed=123)  # test split, another seed than the shipped evaluation
    prompts = [mcq.build_prompt(p, tok) for p in problems]
    gens = generate_reasoning(model, tok, prompts, max_new_tokens=150, batch_size=8)
    assert sum(g.reached_answer for g in gens) >= 6
    fa = forced_answer(model, tok, prompts, [g.reasoning for g in gens])
    correct = sum(a == p.letter for a, p in zip(fa.letters, problems))
    assert correct >= 3, (correct, [g.reasoning for g in gens])  # chance is 2 of 8


@pytest.mark.skipif(not (ASSET_DIR / "stage2" / "adapter_model.safetensors").exists(), reason="stage 2 not built")
def test_stages_merge_in_order():
    """load_model applies every shipped stage; stages=1 is what stage 2 was trained on."""
    import torch

    from probescope.core.models import load_model
    from probescope.core.models.reasoner import load_reasoner, stage_dirs

    assert [d.name for d in stage_dirs()] == [ASSET_DIR.name, "stage2"]
    m1, _ = load_reasoner(stages=1)
    m2, _ = load_model("smollm2-135m-reasoner")
    w1 = m1.model.layers[0].self_attn.q_proj.weight
    w2 = m2.model.layers[0].self_attn.q_proj.weight
    assert w1.shape == w2.shape and not torch.equal(w1, w2)  # stage 2 moved the weights
    assert (w1 - w2).abs().max() < 0.5  # ... by a LoRA-sized step, not a different model
