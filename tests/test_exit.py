"""Early exit of chain-of-thought on tiny-llama: the decode loop, the probe paths, calibration, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probescope.exit.answer import cue_ids, forced_answer_ids, letter_token_ids
from probescope.exit.calibrate import Trace, calibrate, simulate
from probescope.exit.collect import checkpoints, forced_curve_ids
from probescope.exit.generate import ExitPolicy, generate_with_exit
from probescope.core.models import load_model
from probescope.probes.attention import AttentionProbe

LETTERS = ["A", "B", "C", "D"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    texts = ["What is 2+2?", "Hello there, how are you doing today my friend?", "x", "Name three colours."]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


def _probe(layer: int, d: int, seed: int = 0) -> AttentionProbe:
    """A small random-but-trained attention probe on tiny-llama's width."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, d, generator=g)
    y = [LETTERS[i % 4] for i in range(32)]
    from probescope.probes.train import FitConfig

    p = AttentionProbe(n_heads=2)
    p.fit(x, y, config=FitConfig(weight_decay=0.0, max_epochs=3), classes=LETTERS)
    p.layer, p.model_id = layer, "tiny-llama"
    return p


def test_never_policy_equals_hf_generate(tiny, prompts):
    model, tok = tiny
    res = generate_with_exit(model, tok, prompts, policy=ExitPolicy(kind="never"), max_new_tokens=24, batch_size=4)
    for r in res.rows:
        ids = torch.tensor([r.prompt_ids])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert r.fed_ids == ref[: len(r.fed_ids)]
        # the answer is the forced answer read by probescope.exit.answer on prompt + kept reasoning + cue
        fa = forced_answer_ids(model, [r.prompt_ids + r.reasoning_ids + cue_ids(tok)], letter_token_ids(tok), 0)
        assert fa.letters[0] == r.answer
        assert np.allclose(fa.probs[0].numpy(), r.answer_probs, atol=1e-4)


def test_exit_row_does_not_disturb_batch(tiny, prompts):
    model, tok = tiny
    cuts = [3, 24, 9, 17]  # rows leave the batch at different steps
    pol = ExitPolicy(kind="cuts", cuts=cuts)
    batched = generate_with_exit(model, tok, prompts, policy=pol, max_new_tokens=24, batch_size=4)
    for i, p in enumerate(prompts):
        alone = generate_with_exit(model, tok, [p], policy=ExitPolicy(kind="cuts", cuts=[cuts[i]]), max_new_tokens=24)
        a, b = batched.rows[i], alone.rows[0]
        assert a.fed_ids == b.fed_ids and a.reasoning_ids == b.reasoning_ids
        assert a.answer == b.answer
        assert np.allclose(a.answer_probs, b.answer_probs, atol=1e-4)
        assert a.cut == min(cuts[i], a.cut)


def test_probe_exit_prefix_matches_full_run_and_streaming_equals_prefixes(tiny, prompts):
    model, tok = tiny
    probe = _probe(2, 64)
    full = generate_with_exit(model, tok, prompts, probe, ExitPolicy(kind="never"), max_new_tokens=24, batch_size=4,
                              record_layers=[2])
    ours = generate_with_exit(model, tok, prompts, probe, ExitPolicy(kind="probe", tau=0.0, boundary="every",
                                                                     every=5), max_new_tokens=24, batch_size=4)
    for f, o in zip(full.rows, ours.rows):
        assert o.stop == "exit" and o.cut == 5
        assert o.fed_ids == f.fed_ids[: len(o.fed_ids)]  # token for token up to the exit point
        # streaming probe (inside the decode loop) == predict_prefixes on the recorded activations
        x = f.acts[2].float().unsqueeze(0)
        pref = probe.predict_prefixes(x, torch.ones(x.shape[:2], dtype=torch.bool))[0]
        assert torch.allclose(pref, f.probe_trace, atol=1e-5)
        assert torch.allclose(o.probe_trace, f.probe_trace[: len(o.probe_trace)], atol=1e-5)


def test_probe_mode_and_overhead_is_measured(tiny, prompts):
    model, tok = tiny
    probe = _probe(1, 64)
    res = generate_with_exit(model, tok, prompts, probe, ExitPolicy(kind="probe", tau=0.0, boundary="every",
                                                                    every=4, mode="probe"), max_new_tokens=24)
    for r in res.rows:
        assert r.stop == "exit" and r.answer == LETTERS[int(r.probe_trace[3].argmax())]
    assert res.probe_seconds > 0 and res.probe_overhead >= 0


def test_forced_curve_ids_matches_separate_sequences(tiny, prompts):
    model, tok = tiny
    r = generate_with_exit(model, tok, prompts[:1], max_new_tokens=16).rows[0]
    c, lid = cue_ids(tok), letter_token_ids(tok)
    cuts = [0, 3, 7, r.cut]
    got = forced_curve_ids(model, r.prompt_ids, r.reasoning_ids, cuts, c, lid)
    ref = forced_answer_ids(model, [r.prompt_ids + r.reasoning_ids[:k] + c for k in cuts], lid, 0).probs
    assert torch.allclose(got, ref, atol=1e-4)


def test_checkpoints_newline_and_every():
    assert checkpoints([5, 9, 5, 7, 9], cut=4, nl=9) == [(1, 1), (4, 4)]
    assert checkpoints([1] * 10, cut=10, nl=9, boundary="every", every=4) == [(4, 3), (8, 7)]


def _trace(i, split, conf, answers, final="A", full=100):
    return Trace(f"p{i}", split, "A", final, full, np.array([10, 20, 30, 40][: len(conf)]), np.array(conf), answers)


def test_calibration_picks_smallest_tau_meeting_budget():
    # 199 val problems: exiting at conf 0.6 is wrong on 9 of them, 0.8 on 1, 0.95 never.
    traces = []
    for i in range(199):
        bad6, bad8 = i < 9, i < 1
        traces.append(_trace(i, "val", [0.6, 0.8, 0.95], ["B" if bad6 else "A", "B" if bad8 else "A", "A"]))
    # crc at α = 0.05: (k + 1) / 200 <= 0.05 needs k <= 9: τ = 0.6 is the smallest feasible
    assert calibrate(traces, 0.95).tau == pytest.approx(0.6)
    # α = 0.01: k <= 1: the 0.6 checkpoint (9 wrong) fails; τ just above 0.6 exits at 0.8 (1 wrong): smallest τ = 0.8
    cal = calibrate(traces, 0.99)
    assert cal.tau == pytest.approx(0.8) and cal.feasible
    assert simulate(traces, cal.tau).agreement >= 0.99
    # α = 0.004: k + 1 <= 0.8 impossible for any k: never exit
    assert calibrate(traces, 0.996).tau == float("inf")
    # empirical rule at α = 0.01: k / 199 <= 0.01 -> k <= 1 -> 0.8
    assert calibrate(traces, 0.99, rule="empirical").tau == pytest.approx(0.8)
    # ucb needs n >= 299 for α = 0.01: infeasible here
    assert not calibrate(traces, 0.99, rule="ucb").feasible


def test_calibration_never_touches_test_split():
    val = [_trace(i, "val", [0.9], ["A"]) for i in range(120)]
    test_a = [_trace(i, "test", [0.9], ["B"]) for i in range(50)]
    with pytest.raises(ValueError, match="test"):
        calibrate(val + test_a, 0.99)
    # τ depends on val only: it is the same whatever the test split holds
    assert calibrate(val, 0.99).tau == pytest.approx(0.9)


def test_bad_input_errors(tiny, prompts):
    model, tok = tiny
    wide = _probe(1, 32)
    with pytest.raises(ValueError, match="width 32"):
        generate_with_exit(model, tok, prompts[:1], wide, ExitPolicy(kind="probe"), max_new_tokens=4)
    far = _probe(1, 64)
    far.layer = 9
    with pytest.raises(ValueError, match="out of range"):
        generate_with_exit(model, tok, prompts[:1], far, ExitPolicy(kind="probe"), max_new_tokens=4)
    with pytest.raises(ValueError, match="needs a probe"):
        generate_with_exit(model, tok, prompts[:1], None, ExitPolicy(kind="probe"), max_new_tokens=4)
    with pytest.raises(ValueError, match="unknown"):
        generate_with_exit(model, tok, prompts[:1], None, ExitPolicy(kind="sometimes"), max_new_tokens=4)
    with pytest.raises(ValueError, match="one cut per prompt"):
        generate_with_exit(model, tok, prompts[:2], None, ExitPolicy(kind="cuts", cuts=[1]), max_new_tokens=4)


def test_one_prompt_builder(tiny):
    """collect/eval (make_prompts), one problem (make_prompt) and `exit run` (exit_prompt) build the same prompt."""
    from probescope.exit.prompts import DEFAULT_SHOTS, exit_prompt, make_prompt, make_prompts
    from probescope.tasks import mcq

    _, tok = tiny
    probs = mcq.generate("test", 2, seed=1)
    assert make_prompts(probs, tok) == [make_prompt(p, tok) for p in probs] == [
        exit_prompt(mcq.user_text(p), tok) for p in probs]

    class Base:  # a tokenizer without a chat template: few-shot, DEFAULT_SHOTS examples everywhere
        chat_template = None

    base = [exit_prompt(mcq.user_text(p), Base()) for p in probs]
    assert make_prompts(probs, Base()) == base
    assert base[0].count("Answer: (") == DEFAULT_SHOTS
