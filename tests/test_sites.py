"""Every named site equals what HF computes (float32, max abs diff ≤ 1e-6), on llama, gemma3 and gpt2.

References are independent of the hooks: `output_hidden_states`, `output_attentions` with eager attention, and
recomputation from the modules' own weights. Head contributions of a layer sum to attn_out minus o_proj's bias
(tolerance 1e-5: a different summation order). Edits: an edit at one site equals the same change made at an
equivalent site (≤ 1e-5).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from probescope.core.sites import (
    Site,
    find_blocks,
    head_weight,
    parse_site,
    read_sites,
    resolve_site,
    site_hooks,
    stop_forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-6
FAMILIES = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]


def _ids(tok):
    enc = tok(["the quick brown fox jumps", "hello there friend ok"], return_tensors="pt", padding=True)
    return enc["input_ids"], torch.ones_like(enc["input_ids"])


def _diff(a, b) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_site_equals_hf(tiny_models, name):
    check_every_site(*tiny_models[name], L=2)


def family_sites(model, L: int) -> list[str]:
    """Every site of block L the model's family has (parallel blocks have no resid_mid), plus embed and logits."""
    lay = find_blocks(model).layout
    mid = [] if lay.parallel else [f"resid_mid.{L}"]
    return ["embed", f"resid_pre.{L}", *mid, f"resid_post.{L}", f"attn_out.{L}", f"mlp_in.{L}", f"mlp_out.{L}",
            "logits", "resid_pre.0"]


def check_every_site(model, tok, L: int) -> None:
    """Residual sites against `output_hidden_states`, logits against HF's, and the rest recomputed from the block's own
    modules as the family's layout says the block adds them (post-norms, parallel branches, residual multiplier)."""
    ids, mask = _ids(tok)
    blocks = find_blocks(model)
    got = {str(k): v for k, v in read_sites(model, ids, mask, family_sites(model, L)).items()}
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True)
    hs = ref.hidden_states
    assert _diff(got["resid_pre.0"], hs[0]) <= TOL
    assert _diff(got[f"resid_pre.{L}"], hs[L]) <= TOL
    assert _diff(got[f"resid_post.{L}"], hs[L + 1]) <= TOL
    assert _diff(got["logits"], ref.logits) <= TOL
    with torch.no_grad():
        assert _diff(got["embed"], model.get_input_embeddings()(ids)) <= TOL
        block = blocks.layers[L]
        lay = blocks.layout
        scale = float(getattr(model.config, lay.resid_scale)) if lay.resid_scale else 1.0

        def added(norm: str, x):  # what a branch adds to the residual
            return (getattr(block, norm)(x) if norm else x) * scale

        # recomputation from the block's own modules
        mlp_src = got[f"resid_pre.{L}"] if lay.parallel else got[f"resid_mid.{L}"]
        want_in = getattr(block, lay.mid_norm)(mlp_src) if lay.mid_norm else mlp_src
        assert _diff(got[f"mlp_in.{L}"], want_in) <= TOL
        mlp = getattr(block, lay.mlp)
        assert _diff(got[f"mlp_out.{L}"], mlp(got[f"mlp_in.{L}"])) <= TOL
        add_attn, add_mlp = added(lay.attn_resid, got[f"attn_out.{L}"]), added(lay.mlp_resid, got[f"mlp_out.{L}"])
        if lay.parallel:
            assert _diff(got[f"resid_post.{L}"], got[f"resid_pre.{L}"] + add_attn + add_mlp) <= TOL
        else:
            assert _diff(got[f"resid_post.{L}"], got[f"resid_mid.{L}"] + add_mlp) <= TOL
            assert _diff(got[f"resid_mid.{L}"], got[f"resid_pre.{L}"] + add_attn) <= TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_heads_sum_to_attn_out(tiny_models, name):
    check_heads_sum(*tiny_models[name], L=1, rel=1e-5)


def check_heads_sum(model, tok, L: int, rel: float) -> None:
    ids, mask = _ids(tok)
    n = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else model.config.n_head
    got = read_sites(model, ids, mask, [f"attn_out.{L}"] + [f"attn_head.{L}.{h}" for h in range(n)])
    out = got[Site("attn_out", L)]
    heads = sum(got[Site("attn_head", L, h)] for h in range(n))
    lay = find_blocks(model).layout
    proj = getattr(getattr(find_blocks(model).layers[L], lay.attn), lay.o_proj)
    bias = proj.bias if getattr(proj, "bias", None) is not None else 0.0
    assert _diff(heads, out - bias) <= rel * max(1.0, float(out.abs().max()))
    w, hd = head_weight(model, L)
    assert w.shape == (model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd, n * hd)


@pytest.mark.parametrize("name", FAMILIES)
def test_attn_pattern_equals_eager_output_attentions_and_restores_sdpa(tiny_models, name):
    check_attn_pattern(*tiny_models[name], L=1)


def check_attn_pattern(model, tok, L: int) -> None:
    ids, mask = _ids(tok)
    before = model.config._attn_implementation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_sites(model, ids, mask, [f"attn_pattern.{L}", f"resid_post.{L}"])
    assert model.config._attn_implementation == before  # restored
    if before != "eager":
        assert any("needs eager attention" in str(w.message) for w in caught)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = model(input_ids=ids, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    assert got[Site("attn_pattern", L)].shape == ref.attentions[L].shape
    assert _diff(got[Site("attn_pattern", L)], ref.attentions[L]) <= TOL
    # other sites never switch the implementation or warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_sites(model, ids, mask, [f"attn_out.{L}", f"attn_head.{L}.0"])
    assert not any("eager" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", FAMILIES)
def test_edits_at_equivalent_sites_agree(tiny_models, name):
    """Adding v at resid_mid.L, at attn_out.L (where attention adds to the residual unnormed) or to one head
    changes the next residual the same way; an identity edit at every site leaves the logits unchanged."""
    model, tok = tiny_models[name]
    ids, mask = _ids(tok)
    d = model.get_input_embeddings().weight.shape[1]
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    L = 1

    def after(edits):
        seen = []
        with torch.no_grad(), site_hooks(model, {**edits, f"resid_post.{L}": lambda x: seen.append(x) or None}):
            model(input_ids=ids)
        return seen[0]

    mid = after({f"resid_mid.{L}": lambda x: x + v})
    pre = after({f"resid_pre.{L}": lambda x: x})
    assert _diff(mid, pre) > 1e-3  # the edit did something
    if not find_blocks(model).layout.attn_resid:  # gemma3 norms attention's output before adding it
        assert _diff(after({f"attn_out.{L}": lambda x: x + v}), mid) <= 1e-5
        assert _diff(after({f"attn_head.{L}.1": lambda x: x + v}), mid) <= 1e-5
    all_sites = ["embed", "resid_pre.1", "attn_out.1", "attn_head.1.0", "resid_mid.1", "mlp_in.1", "mlp_out.1",
                 "resid_post.1", "logits"]
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with site_hooks(model, {s: (lambda x: x.clone()) for s in all_sites}):
            same = model(input_ids=ids).logits
    assert _diff(base, same) <= TOL


def test_stop_after_deepest_site_skips_later_blocks(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ids, mask = _ids(tok)
    ran = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(find_blocks(model).layers)]
    try:
        read_sites(model, ids, mask, ["mlp_out.1", "resid_pre.0"])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


def test_hooks_removed_on_error(tiny_models):
    model, tok = tiny_models["tiny-gpt2"]
    ids, _ = _ids(tok)

    def boom(x):
        raise RuntimeError("boom")

    def count() -> int:  # HF registers hooks of its own (output recorders): count ours as the difference
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    n0 = count()

    with pytest.raises(RuntimeError, match="boom"):
        with site_hooks(model, {"attn_head.1.1": boom, "resid_mid.2": boom}):
            model(input_ids=ids)
    assert count() == n0


def test_grammar_and_bad_sites(tiny_models):
    model, _ = tiny_models["tiny-llama"]
    assert parse_site(6) == parse_site("6") == parse_site("resid_post.6") == Site("resid_post", 6)
    assert str(parse_site("attn_head.3.1")) == "attn_head.3.1"
    assert str(resolve_site(model, "mlp_out.-1")) == "mlp_out.3"
    with pytest.raises(ValueError, match="'resid_middle.2' is not understood.*resid_mid"):
        parse_site("resid_middle.2")
    with pytest.raises(ValueError, match="needs a head"):
        parse_site("attn_head.2")
    with pytest.raises(ValueError, match="takes no layer"):
        parse_site("logits.3")
    with pytest.raises(ValueError, match="layer 9 is out of range.*4 layers"):
        resolve_site(model, "mlp_in.9")
    with pytest.raises(ValueError, match="head 7 is out of range.*4 query heads"):
        resolve_site(model, "attn_head.1.7")
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="attn_pattern.1 is read only"):
        with torch.no_grad(), site_hooks(model, {"attn_pattern.1": lambda w: w * 0}):
            model(input_ids=ids)


def test_unknown_family_names_the_fix(tiny_models):
    model, _ = tiny_models["tiny-llama"]
    old = model.config.model_type

    class Cfg(type(model.config)):
        model_type = "mystery"

    orig_cls = model.config.__class__
    model.config.__class__ = Cfg
    try:
        assert str(resolve_site(model, "resid_post.1")) == "resid_post.1"  # residual sites work on any model
        with pytest.raises(ValueError, match="'mystery'.*probescope.core.sites.LAYOUTS"):
            resolve_site(model, "mlp_out.1")
    finally:
        model.config.__class__ = orig_cls
    assert model.config.model_type == old


def test_grad_flows_through_read_sites(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ids, mask = _ids(tok)
    got = read_sites(model, ids, mask, ["attn_head.1.0", "resid_pre.2"], grad=True)
    # read_sites with grad keeps the graph: the head contribution reaches the later residual
    g = torch.autograd.grad(got[Site("resid_pre", 2)].sum(), got[Site("attn_head", 1, 0)])[0]
    assert g.shape == got[Site("attn_head", 1, 0)].shape and torch.isfinite(g).all()
    with stop_forward():
        pass


def test_transformerlens_names_map_to_the_same_points():
    """TransformerLens's hook_mlp_in is the MLP block's input before ln2 (resid_mid), ln2.hook_normalized the
    normalised input the MLP reads (our mlp_in): an SAE trained on one must not load onto the other."""
    from probescope.core.sites import foreign_site

    assert foreign_site("blocks.3.hook_mlp_in") == "resid_mid.3"
    assert foreign_site("blocks.3.ln2.hook_normalized") == "mlp_in.3"
    assert foreign_site("blocks.3.hook_resid_mid") == "resid_mid.3"
    assert foreign_site("blocks.3.hook_mlp_out") == "mlp_out.3"
