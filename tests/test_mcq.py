"""The multiple-choice generator: balance, reproducibility, disjoint splits, traces, prompts."""

from collections import Counter

import pytest

from probescope.exit.answer import ANSWER_CUE
from probescope.tasks import mcq
from probescope.core.models.tiny import byte_tokenizer


def test_letters_balanced_by_construction():
    probs = mcq.generate("train", 200, seed=3)
    assert Counter(p.letter for p in probs) == {"A": 50, "B": 50, "C": 50, "D": 50}
    for i in range(0, 200, 4):
        assert {p.letter for p in probs[i: i + 4]} == set(mcq.LETTERS)


def test_reproducible_and_seeded():
    a, b = mcq.generate("val", 30, seed=1), mcq.generate("val", 30, seed=1)
    assert a == b
    assert [p.question for p in mcq.generate("val", 30, seed=2)] != [p.question for p in a]


def test_splits_disjoint():
    s = mcq.make_splits(600, 120, 120, seed=0)
    qs = {k: {p.question for p in v} for k, v in s.items()}
    assert not qs["train"] & qs["val"] and not qs["train"] & qs["test"] and not qs["val"] & qs["test"]
    for split, probs in s.items():
        assert all(mcq.stem_split(p.question) == split for p in probs)
        assert len({p.id for p in probs}) == len(probs)
    with pytest.raises(ValueError, match="appears in splits"):
        mcq.check_disjoint({"train": s["train"][:2], "test": s["train"][1:3]})


def test_options_and_kinds():
    probs = mcq.generate("test", 120, seed=0)
    assert {p.kind for p in probs} == {"arith", "convert"}
    for p in probs:
        assert len(p.options) == 4 and len(set(p.options)) == 4
        assert p.options[p.answer] == p.result
        assert all(int(o) > 0 for o in p.options)


def test_trace_shape():
    for p in mcq.generate("train", 40, seed=0):
        r = mcq.reasoning(p)
        assert mcq.trace(p) == r + ANSWER_CUE + p.letter + ")"
        assert f"({p.letter}) {p.result} yes." in r and "Check:" in r
        # the answer settles inside the reasoning, with a check tail after it
        assert 0.15 < mcq.settle_char(p) / len(r) < 0.8
        assert r.rfind("Check:") > mcq.settle_char(p)


def test_prompt_uses_chat_template():
    tok = byte_tokenizer()
    p = mcq.generate("test", 1)[0]
    text = mcq.build_prompt(p, tok)
    assert text.endswith("<|im_start|>assistant\n") and p.question in text and "(D) " in text
    with pytest.raises(ValueError, match="chat template"):
        mcq.build_prompt(p, None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        mcq.generate("dev", 3)
    with pytest.raises(ValueError, match="unknown problem kind"):
        mcq.generate("train", 3, kinds=("algebra",))
