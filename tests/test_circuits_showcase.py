"""bench/circuits_showcase.py's pure pieces: the prompt's segments and the signed direct inputs of a graph."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_circuits import hand_graph

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def showcase():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_showcase", BENCH / "circuits_showcase.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_segments_in_order(showcase):
    from probescope.tasks.mcq import INSTRUCTION

    q = "How many months are there in 4 years?"
    prompt = f"<|im_start|>user\n{INSTRUCTION}\n\n{q}\n(A) 48\n(B) 40<|im_end|>\n<|im_start|>assistant\n"
    r = "4 × 12 = 48.\nOptions: (A) 48 yes.\nThe result is 48, which is option (A).\nCheck: 48 ÷ 12 = 4."
    text = prompt + r + "\nAnswer: ("
    marks = showcase.segments(text, {"problem": SimpleNamespace(question=q), "prompt": prompt, "reasoning": r})
    names = [n for _, n in marks]
    assert names == list(showcase.SEGMENTS)
    starts = dict((n, s) for s, n in marks)
    assert text[starts["question"]:].startswith(q) and text[starts["options"]:].startswith("(A) 48")
    assert text[starts["reasoning: option scan"]:].startswith("Options:")
    assert text[starts["answer cue"]:] == "\nAnswer: ("
    # a reasoning without an option scan or checks leaves those segments out
    marks = showcase.segments(prompt + "48." + "\nAnswer: (", {"problem": SimpleNamespace(question=q),
                                                             "prompt": prompt, "reasoning": "48."})
    assert "reasoning: checks" not in [n for _, n in marks]


def test_direct_inputs_add_up_to_the_logit_row(showcase):
    g = hand_graph()  # logit <- f0: 3, f1: -1, error: 4; token: 0
    g.token_strings = ["B"]
    d = showcase.direct_inputs(g, {0: {1: {"label": "one", "contexts": ["x[y] (1)"]}}}, lambda pos: "options")
    assert d["sum"] == pytest.approx({"feature": 2.0, "error": 4.0, "token": 0.0})
    assert d["abs_sum"] == pytest.approx({"feature": 4.0, "error": 4.0, "token": 0.0})
    assert [f["feature"] for f in d["top_positive_features"]] == [1]
    assert d["top_positive_features"][0]["label"] == "one"
    assert [f["feature"] for f in d["top_negative_features"]] == [2]
    assert d["letter_tokens"] == [{"pos": 0, "token": "B", "segment": "options", "edge": 0.0}]
