"""The shipped smollm2-135m-reasoner answers held-out problems above chance (slow: real model)."""

import pytest

from probescope.core.models.reasoner import ASSET_DIR, stage_dirs

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


@pytest.mark.skipif(not all((d / "adapter_model.safetensors").exists() for d in stage_dirs(v2=True)),
                    reason="v2 stages not built")
def test_v2_merges_four_stages_and_beats_chance_on_held_out_families():
    """smollm2-135m-reasoner-v2 = stages 1+2 (shared with v1) + stage 3 + stage 8, on problem families never trained."""
    import torch

    from probescope.core.models import load_model
    from probescope.core.models.reasoner import NAME_V2, load_reasoner
    from probescope.exit.answer import forced_answer, generate_reasoning
    from probescope.tasks import mcq

    assert [d.name for d in stage_dirs(v2=True)] == [ASSET_DIR.name, "stage2", "stage3", "stage8"]
    v1, _ = load_reasoner()
    model, tok = load_model(NAME_V2)
    w1, w2 = v1.model.layers[3].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight
    assert not torch.equal(w1, w2) and (w1 - w2).abs().max() < 0.5  # two LoRA-sized steps on top of v1
    del v1
    problems = mcq.generate("val", 8, seed=123, held_out=True)  # held-out families, another seed than the figures
    assert all(p.held_out for p in problems)
    prompts = [mcq.build_prompt(p, tok) for p in problems]
    gens = generate_reasoning(model, tok, prompts, max_new_tokens=320, batch_size=8)
    fa = forced_answer(model, tok, prompts, [g.reasoning for g in gens])
    correct = sum(a == p.letter for a, p in zip(fa.letters, problems))
    assert correct >= 4, (correct, [g.reasoning for g in gens])  # chance is 2 of 8; v2 scores ~65% on 160
