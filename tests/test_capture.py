"""Capture must equal HF's output_hidden_states exactly (float32: max abs diff ≤ 1e-6)."""

import pytest
import torch

import probescope as ps
import probescope.core.sites  # noqa: F401
from probescope.core.hooks import residual_hooks, StopForward

TOL = 1e-6
TEXTS = ["hello there, my friend", "hi", "a somewhat longer sentence to pad against"]


def _hf_states(model, enc):
    with torch.no_grad():
        return model(**enc, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_equals_hf_hidden_states(tiny_models, name, side):
    model, tok = tiny_models[name]
    enc = ps.tokenize(tok, TEXTS, padding_side=side)
    ref = _hf_states(model, enc)
    cap = ps.capture(model, enc, layers=[0, 1, 2, 3])
    for layer in range(3):
        assert (cap.acts[layer] - ref[layer + 1]).abs().max().item() <= TOL
    # The last block's own output has no final norm; HF's last entry has it.
    assert (cap.acts[3] - ref[4]).abs().max().item() > 1e-3
    capn = ps.capture(model, enc, layers=[3], final_norm=True)
    assert (capn.acts[3] - ref[4]).abs().max().item() <= TOL
    assert torch.equal(cap.attention_mask, enc["attention_mask"])
    assert torch.equal(cap.input_ids, enc["input_ids"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_position_with_padding(tiny_models, side):
    model, tok = tiny_models["tiny-llama"]
    enc = ps.tokenize(tok, TEXTS, padding_side=side)
    full = ps.capture(model, enc, layers=[2])
    last = ps.capture(model, enc, layers=[2], positions="last")
    lengths = enc["attention_mask"].sum(1)
    for i, n in enumerate(lengths.tolist()):
        j = enc["attention_mask"].shape[1] - 1 if side == "left" else n - 1
        assert torch.equal(last.acts[2][i], full.acts[2][i, j])
    # and equals the same text run alone, unpadded
    alone = ps.capture(model, TEXTS[1], layers=[2], tokenizer=tok, positions="last")
    assert (alone.acts[2][0] - last.acts[2][1]).abs().max() <= 1e-5


def test_mask_positions(tiny_models):
    model, tok = tiny_models["tiny-gemma3"]
    enc = ps.tokenize(tok, TEXTS)
    mask = enc["attention_mask"].bool() & (torch.rand(enc["input_ids"].shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    full = ps.capture(model, enc, layers=[1])
    sel = ps.capture(model, enc, layers=[1], positions=mask)
    assert sel.acts[1].shape == (int(mask.sum()), 64)
    assert torch.equal(sel.acts[1], full.acts[1][mask])
    assert sel.index.shape == (int(mask.sum()), 2)


def test_batching_matches_single_batch(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    a = ps.capture(model, TEXTS, layers=[1], tokenizer=tok)
    b = ps.capture(model, TEXTS, layers=[1], tokenizer=tok, batch_size=1)
    assert (a.acts[1] - b.acts[1]).abs().max() <= 1e-5


def test_stops_after_deepest_layer(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ran = []
    hs = [blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, blk in enumerate(ps.find_blocks(model).layers)]
    try:
        ps.capture(model, TEXTS, layers=[1], tokenizer=tok)
    finally:
        for h in hs:
            h.remove()
    assert ran == [0, 1]


def test_hooks_removed_on_error(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    blocks = ps.find_blocks(model).layers
    before = [dict(b._forward_hooks) for b in blocks]  # HF installs its own output-capturing hooks

    def boom(h):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with residual_hooks(model, {1: boom}):
            model(tok(["x"], return_tensors="pt").input_ids)
    assert [dict(b._forward_hooks) for b in blocks] == before
    with pytest.raises(StopForward):
        with residual_hooks(model, {0: lambda h: None}, stop_after=0):
            model(tok(["x"], return_tensors="pt").input_ids)
    assert [dict(b._forward_hooks) for b in blocks] == before


def test_bad_input_errors(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    with pytest.raises(ValueError, match="layer 4 is out of range.*4 layers"):
        ps.capture(model, ["x"], layers=[4], tokenizer=tok)
    with pytest.raises(ValueError, match="empty input"):
        ps.capture(model, [], layers=[1], tokenizer=tok)
    with pytest.raises(ValueError, match="no layers"):
        ps.capture(model, ["x"], layers=[], tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        ps.capture(model, ["x"], layers=[1])
    with pytest.raises(TypeError, match="cannot find the transformer blocks"):
        ps.capture(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), layers=[0])


def test_nan_activations_are_reported(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    w = ps.find_blocks(model).layers[0].mlp.down_proj.weight
    saved = w.data.clone()
    try:
        w.data[0, 0] = float("nan")
        with pytest.raises(FloatingPointError, match="layer 1 produced NaN"):
            ps.capture(model, ["hello"], layers=[1], tokenizer=tok)
    finally:
        w.data.copy_(saved)


def test_negative_layer_counts_from_end(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    cap = ps.capture(model, ["hello"], layers=[-1], tokenizer=tok)
    assert cap.layers == [3]


@pytest.mark.slow
def test_capture_exact_on_smollm2(smollm2):
    model, tok = smollm2
    enc = ps.tokenize(tok, TEXTS, padding_side="left")
    ref = _hf_states(model, enc)
    layers = [0, 10, 20, 29]
    cap = ps.capture(model, enc, layers=layers, final_norm=True)
    for layer in layers:
        assert (cap.acts[layer] - ref[layer + 1]).abs().max().item() <= TOL, layer


@pytest.mark.slow
def test_capture_exact_on_gemma3():
    model, tok = ps.load_model("gemma3-270m")
    assert ps.core.sites.n_layers(model) == 18 and ps.core.sites.d_model(model) == 640
    enc = ps.tokenize(tok, TEXTS, padding_side="right")
    ref = _hf_states(model, enc)
    cap = ps.capture(model, enc, layers=[0, 6, 17], final_norm=True)
    for layer in [0, 6, 17]:
        assert (cap.acts[layer] - ref[layer + 1]).abs().max().item() <= TOL, layer
