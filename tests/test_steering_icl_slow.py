"""ICL ↔ steering on SmolLM2-135M (slow): the model learns antonyms few-shot, the grid moves with shots and
strength, the belief model fits held-out cells, the head search runs on the GQA model (9 query / 3 kv heads)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from probescope.core.models import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is faster on a busy shared CPU
    yield load_model("smollm2-135m")
    torch.set_num_threads(old)


def test_grid_and_fit_on_smollm2(smol, tmp_path):
    from probescope.steering.icl_run import IclConfig, run_icl

    model, tok = smol
    cfg = IclConfig(shots="0,1,2,4,8", strengths="-2,0,2", n_queries=8, n_dev=6, n_boot=20, layers="24",
                    out=str(tmp_path / "run"))
    res = run_icl(cfg, model, tok)
    Y = np.array(res["grid"]["log_odds"])
    assert Y[-1, 1] - Y[0, 1] > 3  # 8 antonym shots push towards the antonym
    assert Y[0, -1] - Y[0, 0] > 1  # so does the task vector's strength
    assert res["fits"]["published"]["heldout_r"] > 0.8
    assert res["vector_to_icl"] and "predicted_shots" in res["vector_to_icl"][0]


def test_function_vector_search_on_gqa_model(smol):
    from probescope.steering.fv import compare_vectors
    from probescope.steering.icl_tasks import IclTask

    model, tok = smol
    cfg = SimpleNamespace(n_queries=8, n_dev=4, vector_shots=5, fv_top_k=3, batch_size=64, seed=0, fv_layers=[14])
    r = compare_vectors(model, tok, IclTask.builtin("antonym"), cfg)
    assert r["acc_nshot"] > r["acc_none"] + 0.3  # it does antonyms few-shot
    assert len(r["top_heads"]) == 3 and r["heads_searched"] == 9  # one layer × 9 query heads (3 kv heads)
    assert r["clean_prob"] > r["corrupt_prob"]
