"""Early exit inside HF `generate`: token for token what probescope's own loop does (tiny-llama, greedy)."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TextIteratorStreamer

from probescope.core.models import load_model
from probescope.exit.answer import encode_prefix
from probescope.exit.generate import ExitPolicy, generate_with_exit
from probescope.exit.hf import EarlyExit
from test_exit import LETTERS, _probe


@pytest.fixture(scope="module")
def tiny():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("tiny-llama")
    torch.set_num_threads(old)


def _prompts(tok):
    texts = ["What is 2+2?", "Name three colours.", "x"]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


POLICIES = [
    ExitPolicy(kind="never"),
    ExitPolicy(kind="budget", budget=7),
    ExitPolicy(kind="probe", tau=0.0, boundary="every", every=5),
    ExitPolicy(kind="probe", tau=0.0, boundary="every", every=5, mode="probe"),
    ExitPolicy(kind="probe", tau=0.3, boundary="every", every=3, consecutive=2),
    ExitPolicy(kind="probe", tau=0.0, boundary="newline", min_tokens=4),  # the fed newline starts the cue
    ExitPolicy(kind="probe", tau=0.0, boundary="newline", min_tokens=4, mode="probe"),
    ExitPolicy(kind="probe", tau=2.0, boundary="every", every=5, at_budget="product"),  # never fires: the budget's rule
    ExitPolicy(kind="never", at_budget="calibrated"),
]


def _own_and_processor(model, tok, prompt, probe, policy, max_new):
    """(own loop's row, the processor's row, the new token ids `generate` wrote) on one prompt, greedy."""
    own = generate_with_exit(model, tok, [prompt], probe, policy, max_new_tokens=max_new).rows[0]
    ids = torch.tensor([encode_prefix(tok, prompt)[0]])  # the prompt ids the own loop uses
    with EarlyExit(model, tok, probe, policy, max_new_tokens=max_new) as ee:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             logits_processor=LogitsProcessorList([ee]), max_new_tokens=ee.generate_budget,
                             pad_token_id=tok.pad_token_id)
    return own, ee.rows[0], out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("pi", range(len(POLICIES)))
def test_processor_equals_own_loop_token_for_token(tiny, pi):
    model, tok = tiny
    policy = POLICIES[pi]
    probe = _probe(2, 64)
    for prompt in _prompts(tok):
        own, row, new = _own_and_processor(model, tok, prompt, probe if policy.kind == "probe" else None, policy, 20)
        assert row.fed_ids == own.fed_ids and row.reasoning_ids == own.reasoning_ids
        assert row.stop == own.stop and row.answer == own.answer
        if own.answer_probs and row.answer_probs:
            assert torch.allclose(torch.tensor(row.answer_probs), torch.tensor(own.answer_probs), atol=1e-4)
        text = tok.decode(new)
        # the generated text is the fed reasoning, then the cue's rest, the answer letter, ")" and EOS
        assert new[: len(row.fed_ids)] == row.fed_ids
        assert text.rstrip().endswith(f"Answer: ({row.answer})" + tok.decode([tok.eos_token_id])) or \
            f"Answer: ({row.answer})" in text
        assert new[-1] == tok.eos_token_id
    # the read hook is gone once generation ended
    assert all(len(m._forward_hooks) == 0 for m in model.model.layers)


def test_streaming_and_pipeline(tiny):
    from threading import Thread

    from transformers import pipeline

    model, tok = tiny
    prompt = _prompts(tok)[0]
    policy = ExitPolicy(kind="probe", tau=0.0, boundary="every", every=4)
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    ee = EarlyExit(model, tok, _probe(2, 64), policy, max_new_tokens=20)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    th = Thread(target=model.generate, kwargs=dict(**enc, logits_processor=[ee], do_sample=False, streamer=streamer,
                                                   max_new_tokens=ee.generate_budget, pad_token_id=tok.pad_token_id))
    th.start()
    text = "".join(streamer)
    th.join()
    assert f"Answer: ({ee.rows[0].answer})" in text and ee.rows[0].stop == "exit"
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    ee2 = EarlyExit(model, tok, _probe(2, 64), policy, max_new_tokens=20)
    res = pipe(prompt, logits_processor=LogitsProcessorList([ee2]), do_sample=False,
               max_new_tokens=ee2.generate_budget, return_full_text=False, pad_token_id=tok.pad_token_id)
    assert f"Answer: ({ee2.rows[0].answer})" in res[0]["generated_text"]
    assert ee2.rows[0].reasoning_ids == ee.rows[0].reasoning_ids


def test_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="needs a probe"):
        EarlyExit(model, tok, None, ExitPolicy(kind="probe"))
    with pytest.raises(ValueError, match="replay"):
        EarlyExit(model, tok, None, ExitPolicy(kind="cuts", cuts=[1]))
    probe = _probe(2, 64)
    probe.d_model = 32
    with pytest.raises(ValueError, match="width 32"):
        EarlyExit(model, tok, probe, ExitPolicy(kind="probe"))
    assert LETTERS == ["A", "B", "C", "D"]


@pytest.mark.parametrize("mode", ["forced", "probe"])
def test_stream_and_pipeline_show_the_think_exit(mode):
    """A think format streams the reasoning, then `</think>`, the answer cue and the forced (or the probe's) answer;
    `pipeline("text-generation")` passes `logits_processor=` through to the same text."""
    from threading import Thread

    from transformers import pipeline

    from probescope.core.threads import torch_threads
    from probescope.exit.prompts import exit_prompt
    from test_exit_formats import think_model

    with torch_threads(1):
        model, tok = think_model()
        prompt = exit_prompt("What is 2+2? (A) 3 (B) 4 (C) 5 (D) 6", tok, fmt="qwen3")
        policy = ExitPolicy(kind="probe", tau=0.0, boundary="every", every=6, mode=mode)
        ids = torch.tensor([encode_prefix(tok, prompt)[0]])
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        ee = EarlyExit(model, tok, _probe(2, 64), policy, max_new_tokens=20, fmt="qwen3")
        th = Thread(target=model.generate, kwargs=dict(
            input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=[ee], do_sample=False,
            streamer=streamer, max_new_tokens=ee.generate_budget, pad_token_id=tok.pad_token_id))
        th.start()
        chunks = list(streamer)
        th.join()
        row = ee.rows[0]
        text = "".join(chunks)
        assert row.stop == "exit" and row.cut == 6 and len(chunks) > 1  # streamed as it went
        assert text == tok.decode(row.reasoning_ids) + f"</think>\n\nAnswer: ({row.answer})"
        own = generate_with_exit(model, tok, [prompt], _probe(2, 64), policy, max_new_tokens=20, fmt="qwen3").rows[0]
        assert (own.reasoning_ids, own.answer) == (row.reasoning_ids, row.answer)
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        ee2 = EarlyExit(model, tok, _probe(2, 64), policy, max_new_tokens=20, fmt="qwen3")
        res = pipe(prompt, logits_processor=LogitsProcessorList([ee2]), do_sample=False,
                   max_new_tokens=ee2.generate_budget, return_full_text=False, pad_token_id=tok.pad_token_id)
        assert res[0]["generated_text"] == text and ee2.rows[0].answer == row.answer


def test_probe_follows_the_model_device(tiny, monkeypatch):
    """GPU-ready: the probe is moved to the device the model's activations are made on (no GPU here: the move
    is recorded), in the HF processor and in the own loop."""
    model, tok = tiny
    probe = _probe(2, 64)
    moved = []
    real_to = type(probe).to
    monkeypatch.setattr(type(probe), "to", lambda self, *a, **k: moved.append(a[0] if a else k) or real_to(self, *a, **k))
    EarlyExit(model, tok, probe, ExitPolicy(kind="probe", tau=0.9)).close()
    generate_with_exit(model, tok, _prompts(tok)[:1], probe, ExitPolicy(kind="probe", tau=0.9), max_new_tokens=2)
    assert moved == [next(model.parameters()).device] * 2


def test_processor_and_own_loop_take_the_model_dtype(tiny):
    """GPU-ready: on a bfloat16 model (the usual CUDA dtype) the probe reads the bf16 activations (as float32) and
    the processor still equals the own loop token for token; the answer probabilities are float (atol 1e-3)."""
    import copy

    model, tok = tiny
    half = copy.deepcopy(model).to(torch.bfloat16)
    policy = ExitPolicy(kind="probe", tau=0.0, boundary="every", every=5)  # exits at the first check
    probe = _probe(2, 64)
    for prompt in _prompts(tok)[:2]:
        own, row, _ = _own_and_processor(half, tok, prompt, probe, policy, 16)
        assert row.fed_ids == own.fed_ids and row.stop == own.stop and row.answer == own.answer
        assert own.stop == "exit" and len(own.fed_ids) < 16
        assert all(isinstance(x, float) for x in row.answer_probs)
        if own.answer_probs:
            assert torch.allclose(torch.tensor(row.answer_probs), torch.tensor(own.answer_probs), atol=1e-3)


FREE_POLICIES = [
    ExitPolicy(kind="probe", tau=0.0, boundary="every", every=4),  # P(stable) >= 0: exits at the first check
    ExitPolicy(kind="probe", tau=0.0, boundary="newline", min_tokens=3),
    ExitPolicy(kind="probe", tau=1.1, boundary="every", every=4),  # never fires: the model's own end
    ExitPolicy(kind="budget", budget=6),
]


@pytest.mark.parametrize("pi", range(len(FREE_POLICIES)))
def test_free_processor_equals_own_loop(tiny, pi):
    """Free-form answers: the processor exits where the own loop does, the model then writes the answer after the cue
    `\\nAnswer:`, and the normalised answer equals the own loop's forced free answer (token for token before it)."""
    from probescope.exit.free import normalize_answer
    from test_exit_free import _stability_probe

    model, tok = tiny
    policy = FREE_POLICIES[pi]
    probe = _stability_probe()
    for prompt in _prompts(tok):
        own = generate_with_exit(model, tok, [prompt], probe, policy, max_new_tokens=20, answers="free").rows[0]
        ids = torch.tensor([encode_prefix(tok, prompt)[0]])
        with EarlyExit(model, tok, probe, policy, max_new_tokens=20) as ee:  # a stability probe: free answers
            assert ee.free and ee.policy.stable_class == (1 if policy.kind == "probe" else None)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=[ee],
                                 do_sample=False, max_new_tokens=ee.generate_budget, pad_token_id=tok.pad_token_id)
        row = ee.rows[0]
        assert (row.fed_ids, row.reasoning_ids, row.stop) == (own.fed_ids, own.reasoning_ids, own.stop)
        assert row.answer == own.answer and row.answer_probs == []
        new = out[0, ids.shape[1]:].tolist()
        assert new[: len(row.fed_ids)] == row.fed_ids
        text = tok.decode(new, skip_special_tokens=True)
        written = text[len(tok.decode(row.reasoning_ids, skip_special_tokens=True)):]
        assert written.startswith("\nAnswer:") and normalize_answer(written[len("\nAnswer:"):]) == row.answer
        assert new[-1] == tok.eos_token_id or len(new) == ee.generate_budget
    assert all(len(m._forward_hooks) == 0 for m in model.model.layers)


def test_free_processor_bad_input(tiny):
    from test_exit_free import _stability_probe

    model, tok = tiny
    with pytest.raises(ValueError, match="mode='forced'"):
        EarlyExit(model, tok, _stability_probe(), ExitPolicy(kind="probe", mode="probe"))
    with pytest.raises(ValueError, match="classes"):  # a letter probe asked for free answers
        EarlyExit(model, tok, _probe(2, 64), ExitPolicy(kind="probe"), answers="free")
    with pytest.raises(ValueError, match="answers 'text' is unknown"):
        EarlyExit(model, tok, None, ExitPolicy(kind="never"), answers="text")
    with pytest.raises(ValueError, match="answer_tokens=0"):
        EarlyExit(model, tok, None, ExitPolicy(kind="never"), answers="free", answer_tokens=0)
