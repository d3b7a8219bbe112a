"""scripts/train_reasoner.py: the data mix and configuration of stage 11 (#33 item 2: free-form answers on v2)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tr():
    spec = importlib.util.spec_from_file_location("train_reasoner", ROOT / "scripts" / "train_reasoner.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_reasoner", mod)
    spec.loader.exec_module(mod)
    return mod


def test_stage11_half_free_letters_balanced(tr):
    problems = tr.stage3_problems(11)
    assert len(problems) == tr.N_TRAIN_VARIED[11] == 480
    free = [p for p in problems if p.free]
    lettered = [p for p in problems if not p.free]
    assert len(free) == len(lettered) == 240
    assert all(not p.options and p.answer == -1 for p in free)
    assert [p.free for p in problems[:6]] == [False, True] * 3  # alternating: a free problem after each lettered one
    assert set(Counter(p.letter for p in lettered).values()) == {60}  # letters balanced
    assert sum(tr._switches(p) for p in lettered) >= 60  # stage 8's switches are rehearsed
    assert sum(bool(p.retry) for p in lettered) >= 100
    assert len({p.kind for p in free}) == len(tr.mcq.VARIED_KINDS)  # every trained kind without options
    assert not any(p.held_out for p in problems)
    assert len({p.question for p in problems}) == len(problems)


def test_stage11_config_and_seed(tr):
    seeds = {s for st, s in tr.STAGE_SEED.items() if st != 11}
    assert tr.STAGE_SEED[11] not in seeds and tr.STAGE_SEED[11] + 100 not in seeds
    cfg = tr.config("/tmp/x", 11, threads=1)
    assert cfg.model == "smollm2-135m-reasoner-v2" and cfg.lr == 1e-4 and cfg.max_len == 512 and cfg.threads == 1
    assert tr.base_candidate(11) == "stages_1_2_3_8" and tr.candidate_name(11) == "stages_1_2_3_8_11"
    assert tr.config("/tmp/x", 3).threads == 2  # the shipped stages' default
    # the stage-3 mix is unchanged: one problem in 5 free-form
    assert sum(p.free for p in tr.stage3_problems(3)) == tr.N_TRAIN_STAGE3 // 5
