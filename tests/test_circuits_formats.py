"""Transcoder sets written by circuit-tracer and SAELens, loaded into our transcoders: the round trip export →
import gives identical weights and graphs, an SAELens-layout folder of the same weights gives the same graph, and
bad input (a missing layer, another width, an activation we do not support, a pickle file) is refused by name."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from probescope.circuits.attribution import attribute
from probescope.circuits.export import export_circuit_tracer
from probescope.circuits.transcoders import attach_skip, check_transcoders, load_transcoders, save_transcoders
from probescope.core.io import atomic_write_json, load_tensors, save_tensors
from probescope.core.sites import n_layers
from probescope.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.tensor([[257, 10, 20, 30, 40, 50, 60]])
WEIGHTS = ("W_enc", "W_dec", "b_enc", "b_dec")


def _set(model, arch: str = "topk", skip: bool = True, width: int = 96, seed: int = 3) -> list[SAE]:
    """Random transcoders of `arch` (JumpReLU thresholds 0.02–0.2, so a fair share of features fire), with a random
    W_skip each (entries ~ N(0, (0.1/√d)²)) where `skip`."""
    d = model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(n_layers(model)):
        tc = SAE(SAEConfig(d_in=d, n_latents=width, k=6, arch=arch, hook_in=f"mlp_in.{layer}",
                           hook_out=f"mlp_out.{layer}", model="tiny-llama"), seed=seed + layer)
        with torch.no_grad():
            tc.b_enc.copy_(torch.randn(width, generator=g) * 0.1)
            if arch == "jumprelu":
                tc.log_threshold.copy_((0.02 + 0.18 * torch.rand(width, generator=g)).log())
        if skip:
            attach_skip(tc, torch.randn(d, d, generator=g) * 0.1 / math.sqrt(d))
        out.append(tc)
    return out


def _same_graph(a, b, tol: float = 1e-6) -> float:
    """Identical node sets and adjacency within `tol` (absolute); returns the largest difference."""
    assert torch.equal(a.active_features, b.active_features)
    assert torch.equal(a.selected_features, b.selected_features)
    assert torch.equal(a.logit_tokens, b.logit_tokens)
    diff = float((a.adjacency - b.adjacency).abs().max())
    assert diff <= tol, diff
    return diff


def _saelens_folder(tcs: list[SAE], root: Path, arch: str) -> Path:
    """Our set written in SAELens's layout (v6 transcoders): a folder per layer with cfg.json (hooks in metadata,
    TransformerLens names) and sae_weights.safetensors (W_enc [d_in, d_sae], threshold, W_skip [d_out, d_in])."""
    for layer, tc in enumerate(tcs):
        sub = root / f"blocks.{layer}.ln2.hook_normalized"
        sub.mkdir(parents=True)
        w = {"W_enc": tc.W_enc.detach().T.contiguous(), "W_dec": tc.W_dec.detach(), "b_enc": tc.b_enc.detach(),
             "b_dec": tc.b_dec.detach()}
        if "jumprelu" in arch:
            w["threshold"] = tc.log_threshold.detach().exp()
        if "skip" in arch:
            w["W_skip"] = tc.W_skip.detach()
        save_tensors(sub / "sae_weights.safetensors", {k: v.float().contiguous() for k, v in w.items()})
        atomic_write_json(sub / "cfg.json", {
            "architecture": arch, "d_in": tc.cfg.d_in, "d_sae": tc.n_latents, "d_out": tc.cfg.d_out,
            "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
            "metadata": {"hook_name": f"blocks.{layer}.ln2.hook_normalized",
                         "hook_name_out": f"blocks.{layer}.hook_mlp_out", "model_name": "tiny-llama"}})
    return root


def test_circuit_tracer_round_trip_topk(tiny_models, tmp_path):
    """TopK transcoders with skips (input scales not 1, so the export folds them): export → load gives bit-identical
    weights (W_enc, W_dec, b_enc, b_dec, W_skip, k) and the same graph as the set itself (≤ 1e-6 absolute, float32;
    identical node sets); `load_transcoders` detects the layout and `--transcoder-format circuit-tracer` names it."""
    m, tok = tiny_models["tiny-llama"]
    tcs = _set(m, "topk")
    with torch.no_grad():
        tcs[1].in_scale.fill_(1.7)
        tcs[1].out_scale.fill_(0.6)
    ct = export_circuit_tracer(tcs, m, tmp_path / "ct")
    back = load_transcoders(ct)
    named = load_transcoders(ct, "circuit-tracer")
    assert all(torch.equal(a.W_dec, b.W_dec) for a, b in zip(back, named))
    folded = check_transcoders(m, tcs)
    for a, b in zip(folded, back):
        assert b.cfg.arch == "topk" and b.cfg.k == 6 and b.cfg.hook_in.startswith("mlp_in.")
        for k in (*WEIGHTS, "W_skip"):
            want = a._encoder_bias() if k == "b_enc" else getattr(a, k)
            assert torch.equal(want.detach(), getattr(b, k).detach()), k
    g0 = attribute(m, tok, IDS, tcs, quiet=True)
    g1 = attribute(m, tok, IDS, back, quiet=True)
    _same_graph(g0, g1)
    # the exported folder exports again to the same files (a fixed point)
    again = export_circuit_tracer(ct, m, tmp_path / "ct2")
    for layer in range(n_layers(m)):
        x, y = load_tensors(ct / f"layer_{layer}.safetensors"), load_tensors(again / f"layer_{layer}.safetensors")
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError, match="pass --transcoder-format circuit-tracer"):
        load_transcoders(ct, "saelens")


def test_jumprelu_three_layouts_same_graph(tiny_models, tmp_path):
    """A JumpReLU set with skips, saved three ways — ours (save_transcoders), circuit-tracer's (export: per-layer
    `activation_function.threshold`) and SAELens's (jumprelu_skip_transcoder folders built here) — loads to the same
    weights and the same graph (≤ 1e-6 absolute, identical node sets). Without skips, SAELens's jumprelu_transcoder
    matches too; a circuit-tracer folder with no export.json and no threshold is ReLU, as circuit-tracer reads it."""
    m, tok = tiny_models["tiny-llama"]
    tcs = _set(m, "jumprelu")
    save_transcoders(tcs, tmp_path / "ours", model="tiny-llama")
    sets = {"ours": load_transcoders(tmp_path / "ours"),
            "ct": load_transcoders(export_circuit_tracer(tcs, m, tmp_path / "ct")),
            "saelens": load_transcoders(_saelens_folder(tcs, tmp_path / "sl", "jumprelu_skip_transcoder"))}
    for name, s in sets.items():
        for a, b in zip(tcs, s):
            assert b.cfg.arch == "jumprelu", name
            assert all(torch.equal(getattr(a, k).detach(), getattr(b, k).detach()) for k in (*WEIGHTS, "W_skip"))
            assert (a.log_threshold.exp() - b.log_threshold.exp()).abs().max() <= 1e-7, name
    assert sets["saelens"][0].cfg.model == "tiny-llama"
    g = {name: attribute(m, tok, IDS, s, quiet=True) for name, s in sets.items()}
    assert g["ours"].n_features > 10
    _same_graph(g["ours"], g["ct"])
    _same_graph(g["ours"], g["saelens"])
    plain = _set(m, "jumprelu", skip=False, seed=5)
    gp = attribute(m, tok, IDS, plain, quiet=True)
    _same_graph(gp, attribute(m, tok, IDS, _saelens_folder(plain, tmp_path / "sl2", "jumprelu_transcoder"), quiet=True))
    relu = _set(m, "relu", skip=False, seed=9)
    ct = export_circuit_tracer(relu, m, tmp_path / "ct_relu")
    (ct / "export.json").unlink()  # circuit-tracer's own folders carry no export.json
    back = load_transcoders(ct)
    assert [t.cfg.arch for t in back] == ["relu"] * n_layers(m)
    _same_graph(attribute(m, tok, IDS, relu, quiet=True, max_feature_nodes=200),
                attribute(m, tok, IDS, back, quiet=True, max_feature_nodes=200))


def test_cli_attribute_saelens_folder(tiny_models, tmp_path):
    """`probescope circuit attribute --transcoders DIR` takes an SAELens folder as is (the model from its metadata):
    the graph it saves is the API's graph of the same weights (≤ 1e-6); a circuit-tracer folder with --model too."""
    from typer.testing import CliRunner

    from probescope.circuits.export import load_graph
    from probescope.cli import app

    m, tok = tiny_models["tiny-llama"]
    tcs = _set(m, "jumprelu")
    sl = _saelens_folder(tcs, tmp_path / "sl", "jumprelu_skip_transcoder")
    ids = tok("abc abc ab", return_tensors="pt").input_ids
    want = attribute(m, tok, ids, tcs, quiet=True, max_feature_nodes=50)
    for i, args in enumerate((["--transcoders", str(sl)],
                              ["--transcoders", str(export_circuit_tracer(tcs, m, tmp_path / "ct")),
                               "--transcoder-format", "circuit-tracer", "--model", "tiny-llama"])):
        out = tmp_path / f"run{i}"
        res = CliRunner().invoke(app, ["circuit", "attribute", "--prompt", "abc abc ab", *args, "--out", str(out),
                                       "--max-feature-nodes", "50"])
        assert res.exit_code == 0, res.output
        _same_graph(want, load_graph(out))


def _pickle_bomb(marker: Path) -> bytes:
    """A pickle whose loading creates `marker`: if anything unpickles it, the test sees the file."""

    class Bomb:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Bomb())


def test_bad_input_refused_by_name(tiny_models, tmp_path, monkeypatch):
    """Each refused with the bad value named, before any run folder is written: a missing layer file (layer 1, in
    both layouts), another model's width (d_in=32), an activation we do not read (GELU; a threshold ≤ 0; a
    cross-layer transcoder; an input hook before the norm; SAELens's gated transcoder), a pickle file in the folder
    (named, and never opened: unpickling it would create a marker file, and torch.load / pickle.load are made to
    fail)."""
    from typer.testing import CliRunner

    from probescope.cli import app

    m, tok = tiny_models["tiny-llama"]
    tcs = _set(m, "topk", skip=False)
    ct = export_circuit_tracer(tcs, m, tmp_path / "ct")

    def fresh(name: str) -> Path:
        import shutil

        return Path(shutil.copytree(ct, tmp_path / name))

    gap = fresh("gap")
    (gap / "layer_1.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no layer_1\.safetensors: the transcoder of layer 1 is missing"):
        load_transcoders(gap)
    sl = _saelens_folder(_set(m, "jumprelu", skip=False), tmp_path / "sl", "jumprelu_transcoder")
    import shutil

    shutil.rmtree(sl / "blocks.1.ln2.hook_normalized")
    with pytest.raises(ValueError, match="no transcoder for layer 1"):
        load_transcoders(sl)

    narrow = fresh("narrow")
    g = torch.Generator().manual_seed(0)
    save_tensors(narrow / "layer_2.safetensors", {"W_enc": torch.randn(96, 32, generator=g),
                                                  "W_dec": torch.randn(96, 32, generator=g), "b_enc": torch.zeros(96),
                                                  "b_dec": torch.zeros(32)})
    with pytest.raises(ValueError, match="layer 2 has d_in=32.*another model"):
        attribute(m, tok, IDS, narrow, quiet=True)

    gelu = fresh("gelu")
    meta = json.loads((gelu / "export.json").read_text())
    atomic_write_json(gelu / "export.json", {**meta, "activation": "GELU"})
    with pytest.raises(ValueError, match="activation='GELU' is not supported"):
        load_transcoders(gelu)
    neg = fresh("neg")
    (neg / "export.json").unlink()
    for layer in range(n_layers(m)):
        sd = load_tensors(neg / f"layer_{layer}.safetensors")
        sd["activation_function.threshold"] = torch.full((96,), -0.5)
        save_tensors(neg / f"layer_{layer}.safetensors", sd)
    with pytest.raises(ValueError, match=r"JumpReLU threshold -0\.5 ≤ 0 is not supported"):
        load_transcoders(neg)
    clt = fresh("clt")
    (clt / "config.yaml").write_text("model_kind: cross_layer_transcoder\nfeature_input_hook: hook_resid_mid\n")
    with pytest.raises(ValueError, match="model_kind='cross_layer_transcoder' is not supported"):
        load_transcoders(clt)
    (clt / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
                                     "feature_output_hook: hook_mlp_out\nmodel_name: tiny-llama\n")
    with pytest.raises(ValueError, match="feature_input_hook='hook_resid_mid' is not supported"):
        load_transcoders(clt)
    (clt / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                     "feature_output_hook: mlp.hook_out\nmodel_name: tiny-llama\n")
    assert load_transcoders(clt)[0].cfg.model == "tiny-llama"
    gated = _saelens_folder(_set(m, "jumprelu", skip=False), tmp_path / "gated", "jumprelu_transcoder")
    cfg = json.loads((gated / "blocks.0.ln2.hook_normalized" / "cfg.json").read_text())
    atomic_write_json(gated / "blocks.0.ln2.hook_normalized" / "cfg.json", {**cfg, "architecture": "gated_transcoder"})
    with pytest.raises(ValueError, match="architecture 'gated_transcoder' is not supported"):
        load_transcoders(gated)

    marker = tmp_path / "UNPICKLED"

    def no(*a, **k):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", no)
    monkeypatch.setattr(pickle, "load", no)
    monkeypatch.setattr(pickle, "loads", no)
    for where, layout in (("ct", fresh("pk")), ("sl", _saelens_folder(tcs, tmp_path / "pk_sl", "transcoder"))):
        target = layout / ("layer_2.pt" if where == "ct" else "blocks.2.ln2.hook_normalized/sae_weights.pt")
        target.write_bytes(_pickle_bomb(marker))
        name = r"layer_2\.pt" if where == "ct" else r"blocks\.2\.ln2\.hook_normalized/sae_weights\.pt"
        with pytest.raises(ValueError, match=r"holds pickle files \(" + name):
            load_transcoders(layout)
        out = tmp_path / f"run_{where}"
        res = CliRunner().invoke(app, ["circuit", "attribute", "--prompt", "abc", "--transcoders", str(layout),
                                       "--model", "tiny-llama", "--out", str(out)])
        assert res.exit_code != 0 and "pickle" in res.output and not out.exists(), res.output
    assert not marker.exists()
