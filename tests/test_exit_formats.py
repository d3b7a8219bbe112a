"""Reasoning formats (`--format`): a tiny llama whose tokenizer has <think>/</think> tokens and a chat template that
opens the think block; the exit closes it and forces the answer; bad formats and cues are clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LogitsProcessorList
from typer.testing import CliRunner

from probescope.core.models.registry import BuiltinModel, register_model
from probescope.core.models.tiny import CHAT_TEMPLATE, tiny_model
from probescope.exit.answer import cue_ids, encode_prefix, forced_answer_ids, letter_token_ids
from probescope.exit.collect import checkpoints, collect_problems
from probescope.exit.formats import FORMATS, boundary_test, get_format
from probescope.exit.generate import ExitPolicy, generate_with_exit
from probescope.exit.hf import EarlyExit
from probescope.exit.prompts import exit_prompt
from probescope.tasks import mcq
from test_exit import _probe

pytestmark = pytest.mark.usefixtures("one_thread")

THINK_TEMPLATE = CHAT_TEMPLATE.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")
assert "<think>" in THINK_TEMPLATE


def think_model():
    """tiny-llama plus <think> and </think> tokens (seeded new embedding rows) and a template that opens <think>."""
    model, tok = tiny_model("llama")
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = THINK_TEMPLATE
    g = torch.random.get_rng_state()
    torch.manual_seed(1)
    try:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    finally:
        torch.random.set_rng_state(g)
    return model, tok


register_model(BuiltinModel("tiny-llama-think", "tiny-llama with <think> tokens (tests)", lambda **kw: think_model()))


@pytest.fixture(scope="module")
def think():
    return think_model()


def _prompt(tok, fmt="qwen3"):
    return exit_prompt(mcq.user_text(mcq.generate("test", 1)[0]), tok, fmt=fmt)


def test_prompt_ends_inside_the_think_block(think):
    _, tok = think
    p = _prompt(tok)
    assert p.endswith("<|im_start|>assistant\n<think>\n") and p.count("<think>") == 1  # the template opened it
    tok2 = tiny_model("llama")[1]
    tok2.add_tokens(["<think>", "</think>"])
    tok2.chat_template = CHAT_TEMPLATE + "{# </think> #}"  # mentions the markers, does not open the block
    assert exit_prompt("q", tok2, fmt="deepseek-r1-distill").endswith("assistant\n<think>\n")


@pytest.mark.parametrize("name", ["qwen3", "deepseek-r1-distill"])
def test_exit_closes_the_think_block_and_forces_the_answer(think, name):
    model, tok = think
    fmt = get_format(name, boundary="every:5")
    prompt = _prompt(tok, fmt)
    probe = _probe(2, 64)
    pol = ExitPolicy(kind="probe", tau=0.0, boundary="every", every=5)
    r = generate_with_exit(model, tok, [prompt], probe, pol, max_new_tokens=20, fmt=fmt).rows[0]
    assert r.stop == "exit" and r.cut == 5
    c = cue_ids(tok, fmt.cue)
    assert tok.decode(c) == "</think>\n\nAnswer: ("
    ref = forced_answer_ids(model, [r.prompt_ids + r.reasoning_ids + c], letter_token_ids(tok), 0)
    assert r.answer == ref.letters[0] and torch.allclose(torch.tensor(r.answer_probs), ref.probs[0], atol=1e-4)
    # inside HF generate: the same reasoning, then </think>, the cue, the letter, ")" and EOS
    ids = torch.tensor([encode_prefix(tok, prompt)[0]])
    with EarlyExit(model, tok, probe, pol, max_new_tokens=20, fmt=fmt) as ee:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=LogitsProcessorList([ee]),
                             do_sample=False, max_new_tokens=ee.generate_budget, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert ee.rows[0].reasoning_ids == r.reasoning_ids and ee.rows[0].answer == r.answer
    assert new == r.reasoning_ids + c + [letter_token_ids(tok)["ABCD".index(r.answer)]] + cue_ids(tok, ")") + \
        [tok.eos_token_id]


def test_boundaries_newline_sentence_every(think):
    _, tok = think
    nl, dot, a, close = (cue_ids(tok, s)[0] for s in ("\n", ".", "a", "</think>"))
    # plain: the newline is the cue's first token (cut before it); a think cue starts with </think> (cut after it)
    assert checkpoints([a, nl, a], cut=3, nl=nl) == [(1, 1)]
    assert checkpoints([a, nl, a], cut=3, nl=nl, cue_first=close) == [(2, 1)]
    sent = boundary_test(tok, "sentence")
    assert sent(dot) and sent(nl) and not sent(a)
    assert checkpoints([a, dot, a, a, dot], cut=4, nl=sent, cue_first=close) == [(2, 1)]
    assert checkpoints([a] * 9, cut=9, nl=sent, boundary="every", every=4) == [(4, 3), (8, 7)]
    with pytest.raises(ValueError, match="every:N with a whole number"):
        get_format("plain", boundary="every:x")
    with pytest.raises(ValueError, match="boundary 'para' is unknown"):
        get_format("plain", boundary="para")
    with pytest.raises(ValueError, match="format 'r1' is unknown: use one of plain"):
        get_format("r1")


def test_collect_with_a_think_format_and_the_cli(think, tmp_path):
    model, tok = think
    fmt = get_format("qwen3", boundary="sentence")
    probs = mcq.generate("val", 2)
    rows, acts = collect_problems(model, tok, probs, [1], stride=4, max_new_tokens=12, fmt=fmt)
    close = cue_ids(tok, "</think>")[0]
    for r in rows:
        assert r["prompt"].endswith("<think>\n") and all(c == j + 1 for c, j in r["checks"])
        assert r["checks"] == checkpoints(r["fed_ids"], r["cut"], boundary_test(tok, "sentence"), "sentence", 8, close)
        assert r["curve_cuts"][-1] == r["cut"]
    res = CliRunner().invoke(__import__("probescope.cli", fromlist=["app"]).app, [
        "exit", "collect", "--model", "tiny-llama-think", "--format", "deepseek-r1-distill", "--out",
        str(tmp_path / "c"), "--n-train", "0", "--n-val", "2", "--n-test", "0", "--layers", "1", "--max-new-tokens", "6",
        "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "c" / "collect.json").read_text())
    assert meta["format"]["think_close"] == "</think>" and meta["format"]["name"] == "deepseek-r1-distill"


def test_bad_formats_and_cues_are_clear_errors(think, tmp_path):
    model, tok = think
    plain_tok = tiny_model("llama")[1]
    with pytest.raises(ValueError, match=r"'<think>' is 7 tokens .* choose --format plain"):
        FORMATS["qwen3"].check(plain_tok)
    tok2 = tiny_model("llama")[1]
    tok2.add_tokens(["<think>", "</think>"])  # in the vocabulary, but the chat template never writes them
    with pytest.raises(ValueError, match="chat template never writes '<think>'"):
        FORMATS["qwen3"].check(tok2)
    with pytest.raises(ValueError, match="needs the model's chat template"):
        tok2.chat_template = None
        exit_prompt("q", tok2, fmt="qwen3")
    tok3 = tiny_model("llama")[1]
    tok3.add_tokens(["(A"])  # a tokenizer that merges the cue's "(" with the letter
    with pytest.raises(ValueError, match=r"merges the answer cue '\\nAnswer: \(' with the letter 'A'.*--cue"):
        FORMATS["plain"].check(tok3)
    get_format("plain", answer_cue="\nAnswer: ").check(tok3)  # the fix the error names
    with pytest.raises(ValueError, match="merges the answer cue"):
        generate_with_exit(model, tok3, ["q"], None, ExitPolicy(kind="never"), max_new_tokens=2)
    res = CliRunner().invoke(__import__("probescope.cli", fromlist=["app"]).app, [
        "exit", "collect", "--model", "tiny-llama", "--format", "qwen3", "--quiet", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "choose --format plain" in res.output and not (tmp_path / "c").exists()
