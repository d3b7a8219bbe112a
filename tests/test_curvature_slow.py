"""K-FAC curvature edits on SmolLM2-135M (slow: a real model, ~1 minute on one thread)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_factors_edit_and_tail_on_smollm2(smollm2, tmp_path):
    from probescope.curvature import FactorConfig, KFACFactors, collect_factors, make_edit, mlp_matrices, resolve_target
    from probescope.curvature.organism import check_tail
    from probescope.curvature.runner import corpus_split

    model, tok = smollm2
    mats = mlp_matrices(model, [-1], "up,gate,down")
    assert mats == ["mlp.29.up_proj", "mlp.29.gate_proj", "mlp.29.down_proj"]
    texts, held = corpus_split()
    # the 4x-width rule refuses too little data, naming the need (1536 wide → 6,144 tokens)
    with pytest.raises(ValueError, match="6,144"):
        collect_factors(model, tok, texts, mats, FactorConfig(max_tokens=1000), quiet=True)
    f = collect_factors(model, tok, texts, mats, FactorConfig(context_len=128, max_tokens=2000, min_token_ratio=1),
                        out_dir=tmp_path / "f", quiet=True)
    assert f.n_tokens >= 2000 and [t["site"] for t in f.targets] == ["mlp_in.29", "mlp_in.29", "mlp_out.29"]
    assert f.A("mlp.29.down_proj").shape == (1536, 1536) and f.G("mlp.29.down_proj").shape == (576, 576)
    back = KFACFactors.load(tmp_path / "f")
    assert torch.equal(back.a_sum["mlp.29.up_proj"], f.a_sum["mlp.29.up_proj"])
    s = f.summary()
    # curvature is concentrated: 99% of the mass sits in a small share of the components
    assert all(v["share_components_for_99pct"] < 0.5 for v in s.values()), s
    ids = tok(held[0], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        base = model(input_ids=ids).logits
    w0 = {m: resolve_target(model, m).weight.detach().clone() for m in mats}
    ed = make_edit(model, f, "kfac", keep=0.9)
    with ed.applied_to(model):
        with torch.no_grad():
            edited = model(input_ids=ids).logits
    assert float((edited - base).abs().max()) > 1e-3  # the edit did something
    assert all(torch.equal(resolve_target(model, m).weight, w0[m]) for m in mats)  # and was undone bitwise
    assert check_tail(model, ids[:, :32], 22) < 1e-3  # the organism's tail forward equals HF's (fp32)
