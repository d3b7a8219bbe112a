"""Steering on tiny models: exact additions at prompt/generated/all positions (left padding, batches, KV cache),
ablation, training methods, SAE/probe constructors, save/load, llama.cpp GGUF export, eval run and the CLI."""

import json

import pytest
import torch

from probescope.core.hooks import find_blocks, read_into, residual_hooks
from probescope.steering import PositionTracker, SteeringVector, read_gguf
from probescope.steering.pairs import sentiment_pairs

LAYER = 2


@pytest.fixture(scope="module")
def llama(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    return model, tok


@pytest.fixture(scope="module")
def vec(llama):
    model, tok = llama
    return SteeringVector.train(model, tok, sentiment_pairs(tok, 6), [1, LAYER])


def _left_batch(tok):
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        return tok(["a longer prompt here", "hi"], return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old


def _steered_deltas(model, tok, vec, positions, mult=3.0, new=4):
    """Per forward: residual after the steering edit minus before it, at LAYER, during a batched generate."""
    enc = _left_batch(tok)
    before, after = [], []
    with residual_hooks(model, {LAYER: read_into(before)}):
        with vec.apply(model, multiplier=mult, positions=positions, layers=[LAYER]):
            with residual_hooks(model, {LAYER: read_into(after)}):
                model.generate(**enc, max_new_tokens=new, do_sample=False, min_new_tokens=new,
                               pad_token_id=tok.pad_token_id)
    return enc, [a - b for a, b in zip(after, before)]


@pytest.mark.parametrize("positions,expect", [("all", [1, 1, 1, 1]), ("prompt", [1, 0, 0, 0]),
                                              ("generated", [0, 1, 1, 1])])
def test_adds_exactly_the_vector_at_chosen_positions(llama, vec, positions, expect):
    model, tok = llama
    enc, deltas = _steered_deltas(model, tok, vec, positions)
    assert len(deltas) == 4
    assert deltas[0].shape[:2] == enc["input_ids"].shape  # the prompt forward, left padded
    assert all(d.shape[1] == 1 for d in deltas[1:])  # KV-cached: one new token per forward
    v = 3.0 * vec.directions[LAYER]
    for d, on in zip(deltas, expect):
        target = v.expand_as(d) if on else torch.zeros_like(d)
        torch.testing.assert_close(d, target, atol=1e-5, rtol=0)


def test_nothing_after_context_exits(llama, vec):
    model, tok = llama
    enc = _left_batch(tok)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    before = [dict(b._forward_hooks) for b in find_blocks(model).layers]  # HF may hold its own capture hooks
    plain = model.generate(**enc, **kw)
    with vec.apply(model, multiplier=50.0):
        steered = model.generate(**enc, **kw)
    after = model.generate(**enc, **kw)
    assert torch.equal(plain, after)
    assert not torch.equal(plain, steered)
    assert [dict(b._forward_hooks) for b in find_blocks(model).layers] == before
    with pytest.raises(RuntimeError):
        with vec.apply(model, multiplier=1.0):
            raise RuntimeError("boom")
    assert [dict(b._forward_hooks) for b in find_blocks(model).layers] == before


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_left_padded_batch_matches_single_rows(tiny_models, name):
    model, tok = tiny_models[name]
    v = SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(1))})
    enc = _left_batch(tok)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # gpt2 has absolute positions: shift them
    with v.apply(model, multiplier=2.0):
        batch = model(**enc, position_ids=pos).logits
        for i in range(2):
            m = enc["attention_mask"][i].bool()
            single = model(input_ids=enc["input_ids"][i][m][None]).logits[0]
            torch.testing.assert_close(batch[i][m], single, atol=2e-4, rtol=1e-4)


def test_ablate_and_ablate_add(llama, vec):
    model, tok = llama
    ids = tok(["some text to look at"], return_tensors="pt")["input_ids"]
    u = vec.directions[LAYER] / vec.directions[LAYER].norm()
    for mode, mult, want in [("ablate", 1.0, 0.0), ("ablate_add", 2.0, 2.0 * float(vec.directions[LAYER].norm()))]:
        seen = []
        with vec.apply(model, multiplier=mult, mode=mode, layers=[LAYER]):
            with residual_hooks(model, {LAYER: read_into(seen)}):
                model(input_ids=ids)
        proj = seen[0] @ u
        torch.testing.assert_close(proj, torch.full_like(proj, want), atol=1e-4, rtol=1e-5)


def test_mask_positions(llama, vec):
    model, tok = llama
    ids = tok(["mask me please"], return_tensors="pt")["input_ids"]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 2] = True
    before, after = [], []
    with residual_hooks(model, {LAYER: read_into(before)}):
        with vec.apply(model, multiplier=1.0, positions=mask, layers=[LAYER]):
            with residual_hooks(model, {LAYER: read_into(after)}):
                model(input_ids=ids)
    d = after[0] - before[0]
    torch.testing.assert_close(d[0, 2], vec.directions[LAYER], atol=1e-5, rtol=0)
    assert d[0, torch.arange(ids.shape[1]) != 2].abs().max() < 1e-6


def test_tracker_phases():
    t = PositionTracker(first_layer=0)
    phases = []
    for shape in [(2, 5), (2, 1), (2, 1), (3, 4), (3, 1), (1, 1)]:
        t.observe(0, torch.zeros(*shape, 4))
        phases.append(t.generated)
    assert phases == [False, True, True, False, True, False]


def test_train_methods_and_readouts(llama):
    from probescope import capture

    model, tok = llama
    pairs = sentiment_pairs(tok, 8)
    v = SteeringVector.train(model, tok, pairs, [LAYER], batch_size=3)
    pos = capture(model, [p for p, _ in pairs], [LAYER], tokenizer=tok, positions="last").acts[LAYER]
    neg = capture(model, [q for _, q in pairs], [LAYER], tokenizer=tok, positions="last").acts[LAYER]
    torch.testing.assert_close(v.directions[LAYER], (pos - neg).mean(0), atol=1e-5, rtol=1e-4)
    for method in ("pca", "probe"):
        w = SteeringVector.train(model, tok, pairs, [LAYER], method=method)
        assert w.cosine(v) > 0  # oriented like the mean difference
    span = SteeringVector.train(model, tok, pairs, [LAYER], read="span")
    assert span.meta["read"] == "span" and torch.isfinite(span.directions[LAYER]).all()


def test_clear_errors(llama, vec):
    model, tok = llama
    with pytest.raises(ValueError, match="no contrastive pairs"):
        SteeringVector.train(model, tok, [], [1])
    with pytest.raises(ValueError, match="out of range"):
        SteeringVector.train(model, tok, sentiment_pairs(tok, 2), [9])
    with pytest.raises(ValueError, match="method="):
        SteeringVector.train(model, tok, sentiment_pairs(tok, 2), [1], method="magic")
    with pytest.raises(ValueError, match="residual width"):
        with SteeringVector({1: torch.ones(32)}).apply(model):
            pass
    with pytest.raises(ValueError, match="positions="):
        with vec.apply(model, positions="middle"):
            pass
    with pytest.raises(ValueError, match="no direction"):
        with vec.apply(model, layers=[3]):
            pass


def test_from_sae_and_probe(llama):
    class FakeSAE:
        def __init__(self):
            self.W_dec = torch.randn(10, 64)
            self.layer = 2

    sae = FakeSAE()
    v = SteeringVector.from_sae(sae, {3: 2.0, 5: -1.0})
    torch.testing.assert_close(v.directions[2], 2 * sae.W_dec[3] - sae.W_dec[5])
    assert SteeringVector.from_sae(sae.W_dec, 4, layer=1).layers == [1]
    with pytest.raises(ValueError, match="out of range"):
        SteeringVector.from_sae(sae, [12])

    class FakeProbe:  # like probescope's LinearProbe: `direction` is a [n_out, d] property, `layer` an int
        layer = 1

        @property
        def direction(self):
            return torch.arange(64.0)[None]

    p = SteeringVector.from_probe(FakeProbe(), scale=3.0)
    assert p.layers == [1] and abs(p.norms()[1] - 3.0) < 1e-5
    assert p.cosine(torch.arange(64.0)) > 0.9999
    lin = torch.nn.Linear(64, 2)
    q = SteeringVector.from_probe(lin, layer=2)
    assert q.cosine(lin.weight[1] - lin.weight[0], 2) > 0.9999
    with pytest.raises(ValueError, match="layer"):
        SteeringVector.from_probe(torch.ones(64))


def test_save_load_and_gguf(tmp_path, vec):
    import gguf

    folder = vec.save(tmp_path / "v")
    back = SteeringVector.load(folder)
    assert back.layers == vec.layers and back.meta["method"] == "mean_diff"
    assert all(torch.equal(back.directions[k], vec.directions[k]) for k in vec.layers)
    path = vec.export_gguf(tmp_path / "v.gguf", multiplier=2.0)
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "controlvector"
    assert r.fields["controlvector.model_hint"].contents() == "llama"
    assert r.fields["controlvector.layer_count"].contents() == 2
    assert sorted(t.name for t in r.tensors) == ["direction.1", "direction.2"]  # direction.N = output of block N
    g = read_gguf(path)
    torch.testing.assert_close(g.directions[LAYER], 2.0 * vec.directions[LAYER])
    with pytest.raises(ValueError, match="layer 0"):
        SteeringVector({0: torch.ones(64)}).export_gguf(tmp_path / "bad.gguf")
    with pytest.raises(FileNotFoundError):
        SteeringVector.load(tmp_path / "nowhere")


def test_eval_run_writes_series_and_svg(tmp_path, llama, vec):
    from probescope.steering.evaluate import EvalConfig, run_eval

    model, tok = llama
    cfg = EvalConfig(multipliers=(-1.0, 0.0, 1.0), n_prompts=2, n_neutral=2, max_new_tokens=3)
    m = run_eval(vec, model, tok, str(tmp_path / "run"), cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["multipliers"] == [-1.0, 0.0, 1.0]
    assert set(saved["series"]) >= {"sentiment", "positive_rate", "kl", "ppl"}
    assert len(saved["series"]["kl"]) == 3 and abs(saved["series"]["kl"][1]) < 1e-6  # x0 costs nothing
    assert (tmp_path / "run" / "sweep.svg").read_text().startswith("<svg")
    assert m["run_dir"]


def test_cli_make_apply_export_eval(tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    v = str(tmp_path / "vec")
    res = r.invoke(app, ["steer", "make", "--model", "tiny-llama", "--out", v, "--n-pairs", "4", "--layers", "1,2",
                         "--gguf", str(tmp_path / "v.gguf"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["layers"] == [1, 2]
    assert (tmp_path / "vec" / "report.html").exists()  # the vector's folder is its run folder
    res = r.invoke(app, ["steer", "apply", "--vector", v, "--prompt", "hello", "--max-new-tokens", "3", "--json",
                         "--out", str(tmp_path / "ap")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rows"][0]["prompt"] == "hello" and out["run_dir"] == str(tmp_path / "ap")
    assert "hello" in (tmp_path / "ap" / "report.html").read_text()
    res = r.invoke(app, ["steer", "export", "--vector", v, "--out", str(tmp_path / "w.gguf")])
    assert res.exit_code == 0 and (tmp_path / "w.gguf").exists()
    res = r.invoke(app, ["steer", "eval", "--vector", v, "--out", str(tmp_path / "ev"), "--multipliers=-1,0,1",
                         "--n-prompts", "2", "--n-neutral", "2", "--max-new-tokens", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "sweep.svg").exists()
    res = r.invoke(app, ["steer", "make", "--model", "tiny-llama", "--out", v, "--layers", "7"])
    assert res.exit_code == 2 and "out of range" in res.output


def test_from_sae_accepts_probescope_sae_and_names_its_site():
    """A real probescope SAE (cfg.hook_in = 'resid_post.2') gives a vector at layer 2; an MLP SAE is refused."""
    from probescope.sae import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=64, expansion=2, k=4, hook_in="resid_post.2"))
    v = SteeringVector.from_sae(sae, [1, 3])
    assert v.layers == [2] and v.meta["sae_site"] == "resid_post.2"
    torch.testing.assert_close(v.directions[2], (sae.W_dec[1] + sae.W_dec[3]).detach().float())
    tl = SAE(SAEConfig(d_in=64, expansion=2, k=4, hook_in="blocks.3.hook_resid_post"))
    assert SteeringVector.from_sae(tl, 0).layers == [3]
    mlp = SAE(SAEConfig(d_in=64, expansion=2, k=4, hook_in="mlp_out.1"))
    with pytest.raises(ValueError, match="writes mlp_out.1.*resid_post"):
        SteeringVector.from_sae(mlp, 0)
    assert SteeringVector.from_sae(mlp, 0, layer=1).layers == [1]
