"""Every family probescope names, site by site, on a tiny seeded model built from the transformers config class.

For each family (and each block variant: GPT-NeoX parallel/sequential, Falcon's three) the sites of block 1 equal
HF's own tensors or a recomputation from the block's modules (float32, max abs diff ≤ 1e-6: `check_every_site`), the
heads sum to attn_out minus o_proj's bias (≤ 1e-5 relative: another summation order), attention patterns equal eager
`output_attentions` (≤ 1e-6), and an edit at each site changes what follows, leaves what precedes alone (≤ 1e-6),
and equals the same change made at an equivalent site (≤ 1e-5). Parallel blocks refuse resid_mid by name; in a
mixture of experts mlp_out is the sparse block's output. The table of what this covers is docs/families.md.
"""

from __future__ import annotations

import pytest
import torch

from probescope.core.models.tiny import FAMILIES, tiny_model
from probescope.core.sites import LAYOUTS, find_blocks, foreign_site, module_path, resolve_site, site_hooks
from test_sites import TOL, _diff, _ids, check_attn_pattern, check_every_site, check_heads_sum, family_sites

pytestmark = pytest.mark.usefixtures("one_thread")

L = 1
PARALLEL = {"gpt_neox", "phi", "falcon", "falcon:new_decoder"}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}
_CACHE: dict[str, tuple] = {}


def _model(family: str):
    if family not in _CACHE:
        model, tok = tiny_model(family)
        _CACHE[family] = (model.eval(), tok)
    return _CACHE[family]


def test_every_named_family_has_a_tiny_model():
    """Each model type in LAYOUTS is built and tested here (gemma3's multimodal wrapper reads its text config's
    type, gemma3_text), and at least 14 families are, gpt_neox, phi, olmo2 and a mixture of experts among them."""
    types = {_model(f)[0].config.model_type for f in FAMILIES}
    assert set(LAYOUTS) - {"gemma3"} <= types, set(LAYOUTS) - types
    assert len(types) >= 14 and {"gpt_neox", "phi", "olmo2", "mixtral", "falcon"} <= types


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sites_equal_hf(family):
    model, tok = _model(family)
    lay = find_blocks(model).layout
    assert lay is not None and lay.parallel == (family in PARALLEL)
    check_every_site(model, tok, L)
    check_heads_sum(model, tok, L, rel=1e-5)
    check_attn_pattern(model, tok, L)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_module_paths_map_to_sites(family):
    """Another toolkit's module path of a block, its attention and its MLP (nnsight, sparsify) names our site."""
    model, _ = _model(family)
    block = find_blocks(model).layers[L]
    lay = find_blocks(model).layout
    assert foreign_site(module_path(model, block)) == f"resid_post.{L}"
    assert foreign_site(module_path(model, getattr(block, lay.attn))) == f"attn_out.{L}"
    assert foreign_site(module_path(model, getattr(block, lay.mlp))) == f"mlp_out.{L}"


@pytest.mark.parametrize("family", sorted(MOE))
def test_moe_mlp_out_is_the_mixture(family):
    """mlp_out of a sparse layer is the sparse block's output: the routed experts' weighted sum (plus qwen2-moe's
    gated shared expert); check_every_site recomputes it from the block, here that the block is the sparse one."""
    model, _ = _model(family)
    block = find_blocks(model).layers[L]
    assert "SparseMoeBlock" in type(block.mlp).__name__
    assert hasattr(block.mlp, "experts") and hasattr(block.mlp, "gate")


@pytest.mark.parametrize("family", sorted(PARALLEL))
def test_parallel_blocks_refuse_resid_mid(family):
    model, _ = _model(family)
    name = find_blocks(model).layout.family
    with pytest.raises(ValueError, match=rf"resid_mid.1.*{name} model.*parallel.*attn_out.1"):
        resolve_site(model, "resid_mid.1")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_edits_change_what_follows(family):
    model, tok = _model(family)
    ids, _ = _ids(tok)
    lay = find_blocks(model).layout
    scale = float(getattr(model.config, lay.resid_scale)) if lay.resid_scale else 1.0
    d = model.get_input_embeddings().weight.shape[1]
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))

    def run(site=None, fn=None) -> dict[str, torch.Tensor]:
        """resid_pre.L and resid_post.L (read after any edit there) and the logits, with `fn` at `site`."""
        seen: dict[str, torch.Tensor] = {}

        def reader(key: str):
            def fn_(x: torch.Tensor) -> None:
                seen[key] = x.clone()

            return fn_

        hooks = {f"resid_pre.{L}": [reader("pre")], f"resid_post.{L}": [reader("post")]}
        if site is not None:
            hooks.setdefault(site, []).insert(0, fn)
        with torch.no_grad(), site_hooks(model, hooks):
            seen["logits"] = model(input_ids=ids).logits
        return seen

    base = run()
    editable = [s for s in family_sites(model, L) if s != "resid_pre.0"] + [f"attn_head.{L}.1"]
    moved = {}
    for site in editable:
        got = run(site, lambda x: x + v if x.shape[-1] == d else x * 1.5)
        assert _diff(got["logits"], base["logits"]) > 1e-4, f"{site}: the edit changed nothing downstream"
        if site not in ("embed", f"resid_pre.{L}"):
            assert _diff(got["pre"], base["pre"]) <= TOL, f"{site}: the edit changed what precedes it"
        if site != "logits":
            assert _diff(got["post"], base["post"]) > 1e-4, f"{site}: resid_post.{L} did not move"
        moved[site] = got["post"]
    # the same change made at equivalent sites (the branch's own scale undone where the block scales it)
    w = v / scale
    if lay.parallel:  # every branch adds straight to resid_post
        want = run(f"resid_post.{L}", lambda x: x + v)["post"]
        for site in (f"attn_out.{L}", f"attn_head.{L}.1", f"mlp_out.{L}"):
            assert _diff(run(site, lambda x: x + w)["post"], want) <= 1e-5, site
    else:
        mid = run(f"resid_mid.{L}", lambda x: x + v)["post"]
        if not lay.attn_resid:
            for site in (f"attn_out.{L}", f"attn_head.{L}.1"):
                assert _diff(run(site, lambda x: x + w)["post"], mid) <= 1e-5, site
        if not lay.mlp_resid:
            want = run(f"resid_post.{L}", lambda x: x + v)["post"]
            assert _diff(run(f"mlp_out.{L}", lambda x: x + w)["post"], want) <= 1e-5
    # an identity edit (a copy) at every site leaves the logits as they were
    with torch.no_grad(), site_hooks(model, {s: (lambda x: x.clone()) for s in editable}):
        same = model(input_ids=ids).logits
    assert _diff(same, base["logits"]) <= TOL
