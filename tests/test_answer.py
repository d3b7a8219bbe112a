"""The forced answer on tiny models: shapes, probabilities, padding, the KV-cached curve."""

import pytest
import torch

from probescope.exit.answer import (
    AnswerCurve,
    _StopAtText,
    forced_answer,
    forced_answer_curve,
    generate_reasoning,
    letter_token_ids,
)
from probescope.core.models import load_model
from probescope.tasks import mcq
from probescope.core.models.tiny import byte_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def problems():
    return mcq.generate("test", 5, seed=0)


def test_letters_are_single_tokens():
    tok = byte_tokenizer()
    ids = letter_token_ids(tok)
    assert len(set(ids)) == 4
    with pytest.raises(ValueError, match="single-token letters"):
        letter_token_ids(tok, ["AB", "C"])


def test_forced_answer_shapes_and_padding(tiny, problems):
    model, tok = tiny
    prompts = [mcq.build_prompt(p, tok) for p in problems]
    reasonings = [mcq.reasoning(p)[: 20 * (i + 1)] for i, p in enumerate(problems)]  # different lengths
    fa = forced_answer(model, tok, prompts, reasonings, batch_size=3)
    assert fa.probs.shape == (5, 4) and len(fa.letters) == 5
    assert torch.allclose(fa.probs.sum(-1), torch.ones(5), atol=1e-5)
    assert set(fa.letters) <= set("ABCD") and ((fa.letter_mass > 0) & (fa.letter_mass <= 1)).all()
    for i in (0, 4):  # left padding changes nothing
        one = forced_answer(model, tok, prompts[i: i + 1], reasonings[i: i + 1])
        assert torch.allclose(one.probs[0], fa.probs[i], atol=1e-5)
    with pytest.raises(ValueError, match="one reasoning per prompt"):
        forced_answer(model, tok, prompts, reasonings[:2])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_cached_curve_matches_uncached(name, problems):
    model, tok = load_model(name)
    p = problems[0]
    prompt, r = mcq.build_prompt(p, tok), mcq.reasoning(p)[:120]
    a = forced_answer_curve(model, tok, prompt, r, stride=9, chunk=5)
    b = forced_answer_curve(model, tok, prompt, r, stride=9, use_cache=False)
    assert a.cuts == b.cuts and a.cuts[0] == 0 and a.cuts[-1] == a.n_reasoning_tokens
    assert torch.allclose(a.probs, b.probs, atol=1e-4)
    full = forced_answer(model, tok, [prompt], [r])
    assert torch.allclose(a.probs[-1], full.probs[0], atol=1e-4)


def test_settle_cut():
    c = AnswerCurve([0, 2, 4, 6, 8], 8, ["A", "B", "A", "C", "C"], torch.zeros(5, 4))
    assert c.settle_cut() == 6 and c.settle_fraction == 0.75
    c = AnswerCurve([0, 4, 8], 8, ["C", "C", "C"], torch.zeros(3, 4))
    assert c.settle_cut() == 0


def test_generate_reasoning_budget(tiny, problems):
    model, tok = tiny
    gens = generate_reasoning(model, tok, [mcq.build_prompt(p, tok) for p in problems[:3]], max_new_tokens=6)
    assert len(gens) == 3 and all(g.n_new_tokens <= 6 for g in gens)


def test_stop_at_answer_line():
    tok = byte_tokenizer()
    ids = torch.tensor([tok("xx" + "step.\nAnswer: (", add_special_tokens=False)["input_ids"],
                        tok("xx" + "step.\nmore word", add_special_tokens=False)["input_ids"]])
    stop = _StopAtText(tok, "Answer: (", start=2, window=12)
    assert stop(ids, None).tolist() == [True, False]


def test_evaluate_mcq_runs_on_tiny():
    from probescope.exit.mcq_eval import evaluate_mcq

    model, tok = load_model("tiny-llama")
    rep = evaluate_mcq(model, tok, mcq.generate("test", 4, seed=0), batch_size=2, max_new_tokens=8,
                       settle_stride=3, quiet=True)
    assert rep["n"] == 4 and sum(rep["pred_letters"].values()) == 4 and rep["gold_letters"] == dict.fromkeys("ABCD", 1)
    assert 0 <= rep["settle_fraction_mean"] <= 1 and len(rep["rows"]) == 4
    assert all(len(r["probs"]) == 4 and abs(sum(r["probs"]) - 1) < 1e-4 for r in rep["rows"])


def test_sliding_window_model_uses_the_cache_inside_the_window():
    """Gemma 3 has sliding layers: inside the window the cached curve is exact, past it the uncached path runs."""
    import torch

    from probescope.exit.answer import _has_sliding_layers, cue_ids, forced_curve_ids, letter_token_ids
    from probescope.core.models import load_model

    m, tok = load_model("tiny-gemma3")
    g = torch.Generator().manual_seed(0)
    pi, ri = torch.randint(10, 200, (20,), generator=g).tolist(), torch.randint(10, 200, (30,), generator=g).tolist()
    c, lid, cuts = cue_ids(tok), letter_token_ids(tok), list(range(0, 31, 3))
    narrow = forced_curve_ids(m, pi, ri, cuts, c, lid, use_cache=False)  # window 8: overflowed
    assert _has_sliding_layers(m, 60) and _has_sliding_layers(m)
    m.config.sliding_window = 64
    for layer in m.model.layers:
        if getattr(layer.self_attn, "sliding_window", None):
            layer.self_attn.sliding_window = 64
    assert not _has_sliding_layers(m, 20 + 30 + len(c))
    cached = forced_curve_ids(m, pi, ri, cuts, c, lid, use_cache=True)
    ref = forced_curve_ids(m, pi, ri, cuts, c, lid, use_cache=False)
    torch.testing.assert_close(cached, ref, atol=1e-5, rtol=0)  # measured 6e-8
    assert (ref - narrow).abs().max() > 1e-3  # the window matters: the comparison is not vacuous


def test_letter_prior_is_the_mean_forced_answer_on_content_free_prompts(tiny):
    """Contextual calibration (Zhao et al. 2021): the prior is the mean letter distribution on the content-free
    prompts; dividing by it turns a row equal to the prior into a tie and undoes a bias toward one letter."""
    from probescope.exit.answer import CONTENT_FREE, calibrated_letters, content_free_prompts, letter_prior

    model, tok = tiny
    prompts = content_free_prompts(tok)
    assert len(prompts) == len(CONTENT_FREE) and all(p.count("(D)") == 1 for p in prompts)
    assert "(A) N/A\n(B) N/A" in prompts[0] and "(C) ?\n(D) ?" in prompts[2]
    prior = letter_prior(model, tok)
    direct = forced_answer(model, tok, prompts).probs.mean(0)
    assert torch.allclose(prior, direct / direct.sum(), atol=1e-6) and prior.sum().item() == pytest.approx(1.0)
    biased = torch.tensor([0.1, 0.1, 0.1, 0.7])
    probs = torch.tensor([[0.15, 0.1, 0.1, 0.65], [0.05, 0.1, 0.05, 0.8]])
    assert calibrated_letters(probs, biased) == ["A", "D"]  # A is 1.5× its prior, D only 0.93× (then 1.14×)
    with pytest.raises(ValueError, match="zero"):
        calibrated_letters(probs, torch.tensor([0.0, 0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="4 letters"):
        calibrated_letters(probs[:, :3], biased)
