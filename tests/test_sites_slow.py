"""Every named site on the real models (SmolLM2-135M, Gemma-3-270M): equal to HF (float32, ≤ 1e-6), heads sum
to attn_out (≤ 1e-5 relative to attn_out's largest entry: another summation order), patterns equal eager
`output_attentions` (≤ 1e-6)."""

from __future__ import annotations

import pytest
import torch

import probescope as ps
from test_sites import check_attn_pattern, check_every_site, check_heads_sum

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma3():
    return ps.load_model("gemma3-270m")


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_model_sites(request, which):
    model, tok = request.getfixturevalue(which)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        L = 5
        check_every_site(model, tok, L)
        check_heads_sum(model, tok, L, rel=1e-5)
        check_attn_pattern(model, tok, L)
    finally:
        torch.set_num_threads(old)
