"""Circuit tracing: the exactness oracle (each adjacency column = the replacement model's own response to that
node's vector), pruning and scores on a hand-made graph, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from probescope.circuits.attribution import attribute
from probescope.circuits.graph import Graph, influence, normalize_matrix, prune, scores
from probescope.circuits.replacement import ReplacementModel
from probescope.circuits.transcoders import check_transcoders, load_transcoders, save_transcoders
from probescope.core.sites import n_layers
from probescope.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.tensor([[257, 10, 20, 30, 40, 50, 60]])


def make_transcoders(model, k: int = 8, width: int = 128, seed: int = 0) -> list[SAE]:
    """Random transcoders (one per layer) with spread encoder biases, so different features fire per position."""
    d = model.config.get_text_config().hidden_size
    out = []
    for layer in range(n_layers(model)):
        tc = SAE(SAEConfig(d_in=d, n_latents=width, k=k, hook_in=f"mlp_in.{layer}", hook_out=f"mlp_out.{layer}"),
                 seed=seed + layer)
        with torch.no_grad():
            tc.b_enc.copy_(torch.randn(width, generator=torch.Generator().manual_seed(seed + 100 + layer)) * 0.1)
        out.append(tc)
    return out


@pytest.fixture(scope="module")
def setups(tiny_models):
    res = {}
    for name in ("tiny-llama", "tiny-gemma3", "tiny-gpt2"):
        m, tok = tiny_models[name]
        tcs = make_transcoders(m)
        g = attribute(m, tok, IDS, tcs, quiet=True)
        rm = ReplacementModel(m, check_transcoders(m, tcs), IDS, bos_token_id=tok.bos_token_id)
        res[name] = (m, tok, tcs, g, rm)
    return res


def _response(rm: ReplacementModel, g: Graph, base, mlp_add=None, embed_add=None):
    """(change of every graph feature's pre-activation, change of every target's demeaned logit)."""
    mi0, lg0 = base
    mi, lg = rm.forward(mlp_add, embed_add)
    dm = lambda x: x - x.mean()  # noqa: E731
    d_logit = (dm(lg) - dm(lg0))[g.logit_tokens]
    d_feat = []
    for i in range(g.n_features):
        layer, pos, f = g.active_features[g.selected_features[i]].tolist()
        d_feat.append((rm.preactivations(layer, mi[layer, pos]) - rm.preactivations(layer, mi0[layer, pos]))[f])
    return torch.stack(d_feat), d_logit


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_exactness_oracle(setups, name):
    """Adding a node's vector moves feature pre-activations and demeaned logits by exactly its column (float32:
    ≤ 1e-5 on logits, ≤ 1e-3 on activations), for error, token and feature nodes."""
    m, tok, tcs, g, rm = setups[name]
    base = rm.forward()
    with torch.no_grad():
        ref = m(IDS).logits[0, -1]
    assert (base[1] - ref).abs().max() < 1e-4  # the replacement model with its errors is the model
    T, L, nf = g.n_pos, g.n_layers, g.n_features
    cols = []
    for layer, pos in ((0, 2), (1, 4), (L - 1, T - 1)):
        cols.append((nf + layer * T + pos, {(layer, pos): rm.errors[layer, pos]}, None))
    for pos in (0, 3, T - 1):
        cols.append((g.token_slice.start + pos, None, {pos: rm.tokens[pos]}))
    for i in (0, nf // 3, nf // 2, nf - 1):
        layer, pos, _ = g.active_features[g.selected_features[i]].tolist()
        cols.append((i, {(layer, pos): rm.decoder_vecs[g.selected_features[i]]}, None))
    moved = 0.0
    for col, mlp_add, embed_add in cols:
        d_feat, d_logit = _response(rm, g, base, mlp_add, embed_add)
        assert (g.adjacency[:nf, col] - d_feat).abs().max() <= 1e-3, col
        assert (g.adjacency[g.n_nodes - g.n_logits:, col] - d_logit).abs().max() <= 1e-5, col
        moved = max(moved, float(d_feat.abs().max()), float(d_logit.abs().max()))
    assert moved > 1e-2  # the interventions moved something: the comparison is not 0 == 0


def test_bos_error_nodes(setups):
    """At a leading BOS the MLP output is a constant by default (circuit-tracer's convention): its error columns
    are 0 and the rest of the graph is the same; with bos_error=True they are the oracle's response to adding that
    error vector (≤ 1e-5 on logits, ≤ 1e-3 on activations)."""
    m, tok, tcs, g, rm = setups["tiny-llama"]
    assert int(IDS[0, 0]) == tok.bos_token_id
    nf, T, L = g.n_features, g.n_pos, g.n_layers
    cols = [nf + layer * T for layer in range(L)]
    assert float(g.adjacency[:, cols].abs().max()) == 0.0
    gb = attribute(m, tok, IDS, tcs, bos_error=True, quiet=True)
    other = [c for c in range(g.adjacency.shape[1]) if c not in cols]
    assert torch.equal(gb.selected_features, g.selected_features)
    assert torch.allclose(gb.adjacency[:, other], g.adjacency[:, other], atol=1e-6)
    base = rm.forward()
    moved = 0.0
    for layer in range(L - 1):
        d_feat, d_logit = _response(rm, gb, base, mlp_add={(layer, 0): rm.errors[layer, 0]})
        col = gb.adjacency[:, nf + layer * T]
        assert (d_logit - col[gb.token_slice.stop:]).abs().max() <= 1e-5
        assert (d_feat - col[:nf]).abs().max() <= 1e-3
        moved = max(moved, float(col.abs().max()))
    assert moved > 1e-3  # the BOS errors do reach later features or logits


def test_graph_shape_and_causality(setups):
    m, tok, tcs, g, rm = setups["tiny-llama"]
    L, T = g.n_layers, g.n_pos
    assert g.n_features == len(g.active_features) == 4 * 6 * 8  # BOS position dropped, k = 8 per position
    assert g.n_nodes == g.n_features + L * T + T + g.n_logits
    assert 1 <= g.n_logits <= 10
    assert float(g.logit_probabilities[:-1].sum()) < 0.95 or g.n_logits == 10
    # a feature only reads from earlier layers and positions at or before its own
    for i in range(0, g.n_features, 17):
        layer, pos, _ = g.active_features[g.selected_features[i]].tolist()
        row = g.adjacency[i]
        for j in torch.nonzero(row[:g.n_features]).flatten().tolist():
            sl, sp, _ = g.active_features[g.selected_features[j]].tolist()
            assert sl < layer and sp <= pos
        errs = row[g.error_slice].reshape(L, T)
        assert errs[layer:].abs().sum() == 0 and errs[:, pos + 1:].abs().sum() == 0
    assert g.adjacency[g.error_slice].abs().sum() == 0 and g.adjacency[g.token_slice].abs().sum() == 0


def test_batch_size_and_node_cap_agree(setups):
    m, tok, tcs, g, rm = setups["tiny-llama"]
    g1 = attribute(m, tok, IDS, tcs, batch_size=5, quiet=True)
    assert torch.allclose(g1.adjacency, g.adjacency, atol=1e-5)
    cap = 40
    gc = attribute(m, tok, IDS, tcs, max_feature_nodes=cap, batch_size=8, quiet=True)
    assert gc.n_features == cap
    keep = torch.cat([gc.selected_features, torch.arange(g.n_features, g.n_nodes)])
    rows = torch.cat([gc.selected_features, torch.arange(g.n_features, g.n_nodes)])
    assert torch.allclose(gc.adjacency, g.adjacency[rows][:, keep], atol=1e-5)
    # the first features visited are those with the most direct influence on the logits
    logit_rows = normalize_matrix(g.adjacency[g.n_nodes - g.n_logits:])
    direct = (g.logit_probabilities.double()[:, None] * logit_rows).sum(0)[:g.n_features]
    assert int(direct.argmax()) in gc.selected_features.tolist()


def test_bad_input(tiny_models, tmp_path):
    m, tok = tiny_models["tiny-llama"]
    tcs = make_transcoders(m)
    with pytest.raises(ValueError, match="max_feature_nodes=0"):
        attribute(m, tok, IDS, tcs, max_feature_nodes=0)
    with pytest.raises(ValueError, match="empty"):
        attribute(m, tok, "  ", tcs)
    with pytest.raises(ValueError, match="layer 3 is missing"):
        attribute(m, tok, IDS, tcs[:3])
    other = SAE(SAEConfig(d_in=32, n_latents=64, k=4, hook_in="mlp_in.1", hook_out="mlp_out.1"))
    with pytest.raises(ValueError, match="d_in=32.*width 64"):
        attribute(m, tok, IDS, [tcs[0], other, *tcs[2:]])
    bad = make_transcoders(m)
    with torch.no_grad():
        bad[2].W_dec[5, 3] = float("nan")
    with pytest.raises(ValueError, match="layer 2 has 1 non-finite values in W_dec"):
        attribute(m, tok, IDS, bad)
    with pytest.raises(ValueError, match="more than max_tokens=4"):
        attribute(m, tok, IDS, tcs, max_tokens=4)
    save_transcoders(tcs, tmp_path / "tc", model="tiny-llama")
    assert len(load_transcoders(tmp_path / "tc")) == 4
    import shutil

    shutil.rmtree(tmp_path / "tc" / "layer_2")
    with pytest.raises(ValueError, match="no transcoder for layer 2"):
        load_transcoders(tmp_path / "tc")


def test_model_restored_after(setups):
    m, tok, tcs, g, rm = setups["tiny-llama"]
    impl = m.config._attn_implementation
    with torch.no_grad():
        before = m(IDS).logits
    attribute(m, tok, IDS, tcs, quiet=True)
    with torch.no_grad():
        after = m(IDS).logits
    assert m.config._attn_implementation == impl
    assert torch.equal(before, after)
    assert all(p.requires_grad for p in m.parameters())


# -- pruning and scores on a hand-made graph ---------------------------------------------------------------------

def hand_graph() -> Graph:
    """Nodes f0, f1, error, token, logit (one layer, one position). logit ← f0: 3, f1: -1, error: 4;
    f1 ← token: 1, f0: -1; f0 ← token: 2. Influence (by hand): f0 7/16, f1 1/8, error 1/2, token 1/2."""
    a = torch.zeros(5, 5)
    a[4, 0], a[4, 1], a[4, 2] = 3.0, -1.0, 4.0
    a[1, 3], a[1, 0] = 1.0, -1.0
    a[0, 3] = 2.0
    return Graph(prompt="x", input_tokens=torch.tensor([7]), active_features=torch.tensor([[0, 0, 1], [0, 0, 2]]),
                 activation_values=torch.tensor([1.0, 2.0]), selected_features=torch.tensor([0, 1]),
                 logit_tokens=torch.tensor([9]), logit_probabilities=torch.tensor([1.0]), adjacency=a, n_layers=1)


def test_influence_by_hand_and_by_inverse():
    g = hand_graph()
    inf = influence(normalize_matrix(g.adjacency), g.logit_weights())
    assert torch.allclose(inf, torch.tensor([7 / 16, 1 / 8, 1 / 2, 1 / 2, 0.0], dtype=torch.float64), atol=1e-12)
    a = normalize_matrix(g.adjacency)
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.allclose(inf, g.logit_weights() @ (torch.linalg.inv(eye - a) - eye), atol=1e-12)


def test_scores_by_hand():
    s = scores(hand_graph())
    assert s["replacement"] == pytest.approx(0.5, abs=1e-12)  # token 1/2 vs error 1/2
    # non-error share per row: 1, 1, 1, 1, 1/2 (the logit); weights influence + logit weight
    assert s["completeness"] == pytest.approx((7 / 16 + 1 / 8 + 1 / 2 + 1 / 2 + 1 / 2) / (7 / 16 + 1 / 8 + 1 / 2 + 1 / 2 + 1),
                                              abs=1e-12)


def test_prune_by_hand():
    g = hand_graph()
    p = prune(g, node_threshold=0.8, edge_threshold=0.98)
    # sorted influence 1/2, 1/2, 7/16, 1/8: 80% is reached at f0, so f1 goes; token and logit always stay
    assert p.node_mask.tolist() == [True, False, True, True, True]
    assert not p.edge_mask[4, 1] and not p.edge_mask[1, 3]
    assert p.edge_mask[4, 0] and p.edge_mask[4, 2] and p.edge_mask[0, 3]
    keep_all = prune(g, node_threshold=1.0, edge_threshold=1.0)
    assert keep_all.node_mask.all()
    with pytest.raises(ValueError, match="node_threshold=1.5"):
        prune(g, node_threshold=1.5)


def test_influence_shares_and_top_nodes_by_hand():
    from probescope.circuits.graph import influence_shares, top_nodes

    g = hand_graph()
    sh = influence_shares(g)  # influence f 7/16 + 1/8, error 1/2, token 1/2: total 25/16
    assert sh["influence"] == pytest.approx({"feature": 9 / 25, "error": 8 / 25, "token": 8 / 25}, abs=1e-12)
    assert sh["top_logit_inputs"] == pytest.approx({"feature": 0.5, "error": 0.5, "token": 0.0}, abs=1e-12)
    feats = top_nodes(g, "feature", 5)
    assert [(n["index"], n["feature"]) for n in feats] == [(0, 1), (1, 2)]
    assert feats[0]["influence"] == pytest.approx(7 / 25, abs=1e-12)
    assert [n["kind"] for n in top_nodes(g, "token", 3)] == ["token"]
    with pytest.raises(ValueError, match="kind='logit'"):
        top_nodes(g, "logit", 1)


# -- save, export (circuit-tracer schema), run folder, CLI -------------------------------------------------------

def test_graph_json_round_trip(setups, tmp_path):
    from probescope.circuits.export import _node, check_graph_json, load_graph, read_graph_json, save_graph, to_graph_json
    from probescope.core.io import atomic_write_json

    m, tok, tcs, g, rm = setups["tiny-llama"]
    p = prune(g)
    data = to_graph_json(g, "t", "tiny", pruned=p)
    atomic_write_json(tmp_path / "graph.json", data)
    back = read_graph_json(tmp_path / "graph.json")
    assert back == data
    index = {}
    for i in p.node_mask.nonzero().flatten().tolist():
        index[_node(g, i, 0.0)["node_id"]] = i
    assert {n["node_id"] for n in back["nodes"]} <= set(index)
    kinds = {n["feature_type"] for n in back["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    assert sum(n["is_target_logit"] for n in back["nodes"]) == 1
    assert len(back["links"]) > 0
    for e in back["links"]:  # every link is the adjacency entry target ← source of a kept edge
        d, s = index[e["target"]], index[e["source"]]
        assert p.edge_mask[d, s] and e["weight"] == float(g.adjacency[d, s])
    assert back["metadata"]["prompt_tokens"][0] == tok.decode([int(IDS[0, 0])]).replace("\n", "⏎")
    bad = dict(data, nodes=[dict(data["nodes"][0], ctx_idx="3")] + data["nodes"][1:])
    with pytest.raises(ValueError, match="ctx_idx='3'"):
        check_graph_json(bad)
    save_graph(g, tmp_path / "full")
    g2 = load_graph(tmp_path / "full")
    assert torch.equal(g2.adjacency, g.adjacency) and torch.equal(g2.active_features, g.active_features)
    assert scores(g2) == scores(g)


def test_cli_attribute(tiny_models, tmp_path):
    import json

    from typer.testing import CliRunner

    from probescope.cli import app

    m, tok = tiny_models["tiny-llama"]
    save_transcoders(make_transcoders(m), tmp_path / "tc", model="tiny-llama")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["circuit", "attribute", "--prompt", "abc abc ab", "--transcoders",
                                   str(tmp_path / "tc"), "--out", str(out), "--max-feature-nodes", "50", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["n_feature_nodes"] == 50 and 0 <= r["replacement"] <= 1 and 0 <= r["completeness"] <= 1
    for f in ("config.json", "metrics.json", "graph.json", "graph.safetensors", "report.html"):
        assert (out / f).exists(), f
    assert "<svg" in (out / "report.html").read_text() and "Attribution graph" in (out / "report.html").read_text()
    res = CliRunner().invoke(app, ["circuit", "attribute", "--prompt", "x", "--transcoders", str(tmp_path / "tc"),
                                   "--out", str(tmp_path / "r2"), "--max-feature-nodes", "0"])
    assert res.exit_code != 0 and "--max-feature-nodes 0 is out of range" in res.output and not (tmp_path / "r2").exists()


# -- interventions that test the graph ------------------------------------------------------------------------

def test_intervene_direct_and_last_layer_exact(setups):
    """Zeroing a feature moves every target's demeaned logit by exactly −(its edge into that logit) where only direct
    paths exist: in the `direct` setting for any feature, and in the `frozen` replacement model (later features
    re-encoded) for a feature of the last layer, which has no later feature to pass through (float32, ≤ 1e-5 direct,
    ≤ 5e-5 frozen).
    Scaling by 2 adds the edge once; setting a feature to its own value in `frozen` changes nothing beyond the
    re-encoding noise below (≤ 1e-4: the value set is the clean forward's, the one replaced is re-encoded from an
    input with float noise; measured 2.6e-5 on AMD EPYC, below 1e-5 on AMX Xeon). Without
    interventions every setting gives the model's logits (`direct` ≤ 1e-4, measured 2.5e-7; `frozen` ≤ 2e-4 and
    `free` ≤ 5e-4: there the random transcoders re-encode, layer after layer, inputs that the frozen attention and
    linearised norms (`free`: the model's own attention kernel) reproduce with float noise of ~1e-7, which they
    amplify: `frozen` measured 8.9e-5 to 1.0e-4 on AMX Xeon and AMD EPYC (AVX-512) machines, logits of scale 0.5)."""
    from probescope.circuits.intervene import Intervener

    m, tok, tcs, g, rm = setups["tiny-llama"]
    iv = Intervener(m, check_transcoders(m, tcs), IDS, bos_token_id=tok.bos_token_id)
    with torch.no_grad():
        ref = m(IDS).logits[0, -1]
    for mode, tol in (("direct", 1e-4), ("frozen", 2e-4), ("free", 5e-4), ("model", 1e-6)):
        assert (iv.run([], mode).logits - ref).abs().max() < tol, mode  # no intervention: every setting is the model
    logit_rows = g.adjacency[g.n_nodes - g.n_logits:]
    L = g.n_layers
    last = [i for i in range(g.n_features) if int(g.active_features[g.selected_features[i], 0]) == L - 1]
    early = [i for i in range(g.n_features) if int(g.active_features[g.selected_features[i], 0]) == 0]
    assert last and early
    checked, gap = 0, 0.0
    for i in (*last[:: max(1, len(last) // 6)], *early[:: max(1, len(early) // 6)]):
        layer, pos, f = g.active_features[g.selected_features[i]].tolist()
        want = -logit_rows[:, i]
        d = iv.run([(layer, pos, f, 0.0)], "direct").demeaned_change()[g.logit_tokens]
        assert (d - want).abs().max() <= 1e-5, (layer, pos, f)
        d2 = iv.run([(layer, pos, f, 2.0, "scale")], "direct").demeaned_change()[g.logit_tokens]
        assert (d2 + want).abs().max() <= 1e-5
        a = float(g.activation_values[g.selected_features[i]])
        assert iv.run([(layer, pos, f, a)], "frozen").demeaned_change().abs().max() <= 1e-4
        fr = iv.run([(layer, pos, f, 0.0)], "frozen").demeaned_change()[g.logit_tokens]
        if layer == L - 1:  # ≤ 5e-5: the other features of that layer are re-encoded (noise above; 1.7e-5 on EPYC)
            assert (fr - want).abs().max() <= 5e-5, (layer, pos, f)
            checked += 1
        else:
            gap = max(gap, float((fr - want).abs().max()))
    assert checked >= 2
    assert gap > 1e-4  # an early feature also acts through later features: `frozen` is not `direct` there


def test_intervene_diagnostic_settings(setups):
    """The diagnostic settings between `frozen` and `free` / `model`: without interventions each gives the model's
    logits (≤ 5e-4, the same float noise as `free`, above); in `model_frozen` (real MLPs, attention and norms frozen)
    zeroing a last-layer feature moves the demeaned logits by exactly −(its edges) (≤ 5e-5: nothing later to pass
    through, and the frozen final norm is the graph's); freezing only attention or only the norms lands between the
    frozen and free replacement models for an early feature (each differs from both). `linearized` refuses an
    unknown half."""
    from probescope.circuits.intervene import Intervener
    from probescope.core.sites import linearized

    m, tok, tcs, g, rm = setups["tiny-llama"]
    iv = Intervener(m, check_transcoders(m, tcs), IDS, bos_token_id=tok.bos_token_id)
    with torch.no_grad():
        ref = m(IDS).logits[0, -1]
    for mode in ("attn_frozen", "norms_frozen", "model_frozen"):
        assert (iv.run([], mode).logits - ref).abs().max() < 5e-4, mode
    logit_rows = g.adjacency[g.n_nodes - g.n_logits:]
    L = g.n_layers
    last = [i for i in range(g.n_features) if int(g.active_features[g.selected_features[i], 0]) == L - 1]
    early = [i for i in range(g.n_features) if int(g.active_features[g.selected_features[i], 0]) == 0]
    for i in last[:3]:
        layer, pos, f = g.active_features[g.selected_features[i]].tolist()
        d = iv.run([(layer, pos, f, 0.0)], "model_frozen").demeaned_change()[g.logit_tokens]
        assert (d + logit_rows[:, i]).abs().max() <= 5e-5, (layer, pos, f)
    layer, pos, f = g.active_features[g.selected_features[early[0]]].tolist()
    got = {mode: iv.run([(layer, pos, f, 0.0)], mode).demeaned_change()
           for mode in ("frozen", "attn_frozen", "norms_frozen", "free")}
    for half in ("attn_frozen", "norms_frozen"):
        for whole in ("frozen", "free"):
            assert (got[half] - got[whole]).abs().max() > 1e-6, (half, whole)
    with pytest.raises(ValueError, match="freeze='mlp'"):
        with linearized(m, IDS, freeze="mlp"):
            pass


def test_check_edges_and_agreement_measures(setups):
    """check_edges: in `direct` the measured change equals the predicted one (sign agreement 1, r = 1 within 1e-6,
    max diff ≤ 1e-5); the measures themselves on hand values."""
    from probescope.circuits.intervene import check_edges, pearson, sign_agreement

    assert sign_agreement([1.0, -2.0, 3.0, 0.5], [2.0, -1.0, -3.0, 0.1]) == pytest.approx(0.75)
    assert sign_agreement([1.0, 0.0], [1.0, 0.3]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # by hand: 4 / 5
    nan = float("nan")  # a setting whose forward overflowed (model_frozen can): never agrees, left out of r
    assert sign_agreement([1.0, -1.0], [nan, -2.0]) == pytest.approx(0.5)
    assert sign_agreement([-1.0], [-nan]) == 0.0
    assert pearson([1, 2, 3, 9], [2, 4, 6, nan]) == pytest.approx(1.0)
    m, tok, tcs, g, rm = setups["tiny-llama"]
    r = check_edges(m, g, tcs, n=12, bos_token_id=tok.bos_token_id)
    assert len(r["edges"]) == 12
    edges = [abs(e["edge"]) for e in r["edges"]]
    assert edges == sorted(edges, reverse=True) and edges[-1] > 0
    s = r["summary"]["direct"]
    assert s["sign_agreement"] == 1.0 and s["pearson"] == pytest.approx(1.0, abs=1e-6) and s["max_abs_diff"] <= 1e-5
    for mode in ("frozen", "free", "model"):
        assert 0.0 <= r["summary"][mode]["sign_agreement"] <= 1.0
        assert all(math.isfinite(e[mode]) for e in r["edges"])
    # error and token nodes: removing one moves the top logit by exactly its edge in `direct` (the exactness design,
    # 1e-5), and every error row's real-model change is finite
    for kind in ("error", "token"):
        o = r["other_nodes"][kind]
        assert 2 <= len(o["edges"]) <= 12 and all(abs(e["edge"]) > 0 for e in o["edges"])
        assert all(abs(e["direct"] - e["predicted"]) <= 1e-5 for e in o["edges"]), kind
        assert o["summary"]["direct"]["sign_agreement"] == 1.0
        assert all(math.isfinite(e["model"]) for e in o["edges"])


def test_error_and_token_ablations_are_what_they_say(setups):
    """Removing an error node in the real model puts the transcoder's reconstruction in place of the MLP's output
    at that position (so removing every error at every layer is the replacement model's own logits, 1e-4), and
    zeroing a token node zeroes that position's input embedding (the model run on a zero embedding there)."""
    from probescope.circuits.intervene import Intervener
    from probescope.circuits.transcoders import check_transcoders
    from probescope.core.sites import site_hooks

    m, tok, tcs, g, rm = setups["tiny-llama"]
    iv = Intervener(m, check_transcoders(m, tcs), IDS, bos_token_id=tok.bos_token_id)
    T, L = IDS.shape[1], g.n_layers
    every = [(layer, p) for layer in range(L) for p in range(1, T)]  # BOS: its MLP output a constant in both
    all_out = iv.run([], "model", zero_errors=every).logits
    free = iv.run([], "free", zero_errors=every).logits  # the replacement model, no errors, attention recomputed
    assert (all_out - free).abs().max() <= 1e-4
    assert (all_out - iv.run([], "model").logits).abs().max() > 1e-3  # the errors did carry something

    def zero2(x):
        x = x.clone()
        x[:, 2] = 0
        return x

    with torch.no_grad(), site_hooks(m, {"embed": zero2}):
        want = m(IDS).logits[0, -1].float()
    assert (iv.run([], "model", zero_tokens=[2]).logits - want).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="token position 99"):
        iv.run([], "model", zero_tokens=[99])
    with pytest.raises(ValueError, match="error node"):
        iv.run([], "model", zero_errors=[(L, 0)])


def test_intervene_bad_input(setups):
    from probescope.circuits.intervene import intervene, parse_intervention

    m, tok, tcs, g, rm = setups["tiny-llama"]
    assert parse_intervention("3, 2 ,17*0.5").op == "scale"
    with pytest.raises(ValueError, match="LAYER,POS,FEATURE=VALUE"):
        parse_intervention("3:2:17=0")
    with pytest.raises(ValueError, match="layer=9 is outside"):
        intervene(m, IDS, tcs, [(9, 0, 0, 0.0)])
    with pytest.raises(ValueError, match="pos=7 is outside"):
        intervene(m, IDS, tcs, [(0, 7, 0, 0.0)])
    with pytest.raises(ValueError, match="feature=128 is outside"):
        intervene(m, IDS, tcs, ["0,1,128=0"])
    with pytest.raises(ValueError, match="not finite"):
        intervene(m, IDS, tcs, [(0, 1, 3, float("nan"))])
    with pytest.raises(ValueError, match="mode='live'"):
        intervene(m, IDS, tcs, [], mode="live")


def test_cli_intervene(tiny_models, tmp_path):
    import json

    from typer.testing import CliRunner

    from probescope.cli import app

    m, tok = tiny_models["tiny-llama"]
    save_transcoders(make_transcoders(m), tmp_path / "tc", model="tiny-llama")
    gdir = tmp_path / "g"
    res = CliRunner().invoke(app, ["circuit", "attribute", "--prompt", "abc abc ab", "--transcoders",
                                   str(tmp_path / "tc"), "--out", str(gdir), "--max-feature-nodes", "60"])
    assert res.exit_code == 0, res.output
    g = load_graph_dir(gdir)
    layer, pos, f = g.active_features[g.selected_features[0]].tolist()
    out = tmp_path / "iv"
    res = CliRunner().invoke(app, ["circuit", "intervene", "--graph", str(gdir), "--feature", f"{layer},{pos},{f}=0",
                                   "--feature", f"{layer},{pos},{f}*3", "--check-edges", "6", "--out", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(r["effects"]) == {"direct", "frozen", "free", "model"}
    assert r["edge_check"]["summary"]["direct"]["sign_agreement"] == 1.0
    assert len(r["edge_check"]["edges"]) == 6
    assert json.loads((out / "metrics.json").read_text())["edge_check"]["summary"] == r["edge_check"]["summary"]
    assert "predicted vs measured" in (out / "report.html").read_text()
    bad = tmp_path / "iv2"
    res = CliRunner().invoke(app, ["circuit", "intervene", "--graph", str(gdir), "--feature", "99,0,0=1",
                                   "--out", str(bad)])
    assert res.exit_code != 0 and "layer=99" in res.output and not bad.exists()
    res = CliRunner().invoke(app, ["circuit", "intervene", "--graph", str(gdir), "--modes", "frozen,live",
                                   "--out", str(bad)])
    assert res.exit_code != 0 and "(the value 'live')" in res.output and not bad.exists()


def load_graph_dir(path):
    from probescope.circuits.export import load_graph

    return load_graph(path)


# -- the graph page ---------------------------------------------------------------------------------------------

GRAPH_PROBE_JS = """<script>window.addEventListener('load',()=>{const d=document.body.dataset;
const fig=document.querySelector('figure.cg');const c=[...fig.querySelectorAll('.cg-node')];
const feat=c.filter(x=>x.getAttribute('fill')==='#e0a030');
feat[0].dispatchEvent(new MouseEvent('mouseenter'));d.info=fig.querySelector('.cg-info').textContent;
d.hoverId=d.cgHover;feat[0].dispatchEvent(new MouseEvent('click'));feat[1].dispatchEvent(new MouseEvent('click'));
d.pinnedTwo=d.cgPinned;d.fadedEdges=[...fig.querySelectorAll('.cg-edge')].filter(e=>e.getAttribute('stroke-opacity')==='0.06').length;
fig.querySelector('.cg-make').click();d.manualGroups=d.cgGroups;d.pinnedAfter=d.cgPinned;
const sel=fig.querySelector('.cg-group');for(const v of ['band','profile']){sel.value=v;sel.dispatchEvent(new Event('change'));
d['groups'+v]=d.cgGroups;d['rows'+v]=fig.querySelectorAll('.cg-groups tr').length-1;}
const at=(el,type)=>{const r=el.getBoundingClientRect();el.dispatchEvent(new MouseEvent(type,{bubbles:true,button:0,
clientX:r.left+r.width/2,clientY:r.top+r.height/2}));};
const dragOnto=(a,b)=>{at(a,'mousedown');const r=b.getBoundingClientRect();for(const t of ['mousemove','mouseup'])
document.dispatchEvent(new MouseEvent(t,{bubbles:true,button:0,clientX:r.left+r.width/2,clientY:r.top+r.height/2}));};
const id=el=>JSON.parse(fig.querySelector('.cg-data').textContent).nodes[+el.dataset.i].id;
d.dragIds=JSON.stringify([id(feat[2]),id(feat[3]),id(feat[4])]);
dragOnto(feat[2],feat[3]);d.boxesOne=d.cgBoxes;d.pinnedAfterDrag=d.cgPinned;
d.posBack=String(+feat[2].getAttribute('cx')===JSON.parse(fig.querySelector('.cg-data').textContent).nodes[+feat[2].dataset.i].x);
dragOnto(feat[4],feat[3]);d.boxesTwo=d.cgBoxes;d.manualAfterDrag=d.cgManual;
d.boxRects=fig.querySelectorAll('rect.cg-box').length;d.listed=fig.querySelectorAll('.cg-manual-list li').length;
d.exported=decodeURIComponent(fig.querySelector('.cg-export').getAttribute('href').split(',').slice(1).join(','));
const good=d.exported;fig.querySelectorAll('.cg-ungroup')[0].click();d.afterUngroup=d.cgManual;
const give=text=>{fig.querySelector('.cg-import-text').value=text;fig.querySelector('.cg-load').click();};
give('{"supernodes":[{"name":"x","nodes":["nope","also-nope"]}]}');d.loadBad=d.cgLoad;d.manualAfterBad=d.cgManual;
give(good);d.loadGood=d.cgLoad;d.manualAfterLoad=d.cgManual;d.boxRectsAfterLoad=fig.querySelectorAll('rect.cg-box').length;
});</script></body>"""


def test_graph_page_interactive_in_chromium(tiny_models, tmp_path):
    """The page holds the graph's data (every node and link of graph.json, with both automatic groupings) and, in
    headless Chromium: draws, shows a hovered node's label, top contexts and activation, pins on click (other edges fade), groups
    pinned nodes by hand, and offers the automatic supernodes (as many table rows as groups)."""
    import html
    import json
    import re

    from probescope.circuits.config import AttributeConfig
    from probescope.circuits.report import page_data, layout, supernodes_by_band
    from probescope.circuits.run import run_circuit_attribute
    from probescope.report.browser import check_page, find_chromium

    assert find_chromium(), "Chromium is missing: `make test` installs Debian's chromium"
    from probescope.circuits.labels import label_contexts, label_transcoders
    from probescope.core.data import corpus_texts

    m, tok = tiny_models["tiny-llama"]
    tcs = make_transcoders(m)
    save_transcoders(tcs, tmp_path / "tc", model="tiny-llama")
    label_transcoders(m, tok, tcs, tmp_path / "tc", label_contexts(tok, corpus_texts(), 16, 24), quiet=True)
    out = tmp_path / "g"
    run_circuit_attribute(AttributeConfig(prompt="abc abc ab", transcoders=str(tmp_path / "tc"), out=str(out),
                                          max_feature_nodes=60, quiet=True), m, tok)
    from probescope.report.render import render_report

    page = render_report(out)
    text = page.read_text()
    graph = json.loads((out / "graph.json").read_text())
    blob = re.search(r'<script type="application/json" class="cg-data">(.*?)</script>', text, re.S).group(1)
    data = json.loads(blob.replace("<\\/", "</"))
    assert [n["id"] for n in data["nodes"]] == [n["node_id"] for n in graph["nodes"]]
    assert len(data["links"]) == len(graph["links"]) > 0
    ids = [n["id"] for n in data["nodes"]]
    assert {(ids[s], ids[t], w) for s, t, w in data["links"]} == {(e["source"], e["target"], e["weight"])
                                                                   for e in graph["links"]}
    band = supernodes_by_band(graph)
    for n in graph["nodes"]:  # a band group holds one kind at one position
        if n["feature_type"] == "cross layer transcoder":
            assert band[n["node_id"]].startswith("features L") and f"@ {n['ctx_idx']} " in band[n["node_id"]]
    assert page_data(graph, layout(graph)) == data
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    page.write_text(text.replace("</body>", GRAPH_PROBE_JS))
    res = check_page(page, screenshot=tmp_path / "graph.png", height=1400)
    assert res.errors == 0 and res.console_errors == [], res
    assert res.figures >= 2 and res.figures_ok == res.figures
    a = res.attrs
    assert a["cg-ready"] == "1" and int(a["cg-nodes"]) == len(graph["nodes"])
    assert a["hover-id"] in ids and "feature" in a["info"] and "activation" in a["info"]
    hovered = next(n for n in graph["nodes"] if n["node_id"] == a["hover-id"])
    info = html.unescape(a["info"])
    assert hovered["clerp"] and hovered["clerp"] in info  # the feature's label and its top contexts
    assert "top contexts" in info and hovered["top_contexts"][0] in info
    assert a["pinned-two"] == "2" and int(a["faded-edges"]) > 0
    assert a["manual-groups"] == "1" and a["pinned-after"] == "0"
    n_band = len({v for k, v in band.items() if list(band.values()).count(v) > 1})
    assert int(a["groupsband"]) == n_band == int(a["rowsband"]) and n_band > 0
    assert int(a["groupsprofile"]) == int(a["rowsprofile"])
    # supernodes by hand: dragging a node onto another groups them (a dashed box each, members listed, no pin), a third
    # dragged onto a member joins that group; ungroup dissolves one; the JSON export loads back (pasted; a file goes
    # through the same function), a foreign one is refused
    f2, f3, f4 = json.loads(html.unescape(a["drag-ids"]))
    assert a["boxes-one"] == "2" and a["pinned-after-drag"] == "0" and a["pos-back"] == "true"
    manual = json.loads(html.unescape(a["manual-after-drag"]))
    assert a["boxes-two"] == "2" and manual[1] == [f3, f2, f4] and len(manual[0]) == 2
    assert a["box-rects"] == "2" and a["listed"] == "2"
    exported = json.loads(html.unescape(a["exported"]))
    assert [s["nodes"] for s in exported["supernodes"]] == manual and exported["prompt"] == graph["metadata"]["prompt"]
    assert json.loads(html.unescape(a["after-ungroup"])) == manual[1:]
    assert a["load-bad"] == "refused" and json.loads(html.unescape(a["manual-after-bad"])) == manual[1:]
    assert a["load-good"] == "ok" and json.loads(html.unescape(a["manual-after-load"])) == manual
    assert a["box-rects-after-load"] == "2"
    assert res.screenshot is not None and res.screenshot.stat().st_size > 10_000


def test_supernodes_by_profile_by_hand():
    """Two features at one position with the same edges group together; a third with opposite edges stays alone;
    a feature at another position never joins them."""
    from probescope.circuits.report import supernodes_by_profile

    def node(nid, kind, layer, pos):
        return {"node_id": nid, "feature_type": kind, "layer": layer, "ctx_idx": pos}

    data = {"metadata": {"prompt_tokens": ["a", "b"]},
            "nodes": [node("e0", "embedding", "E", 0), node("f1", "cross layer transcoder", "0", 1),
                      node("f2", "cross layer transcoder", "1", 1), node("f3", "cross layer transcoder", "1", 1),
                      node("f4", "cross layer transcoder", "1", 0), node("lg", "logit", "3", 1)],
            "links": [{"source": "e0", "target": "f1", "weight": 1.0}, {"source": "e0", "target": "f2", "weight": 2.0},
                      {"source": "f1", "target": "lg", "weight": 1.0}, {"source": "f2", "target": "lg", "weight": 2.1},
                      {"source": "e0", "target": "f3", "weight": -1.0}, {"source": "f3", "target": "lg", "weight": -1.0},
                      {"source": "e0", "target": "f4", "weight": 1.0}, {"source": "f4", "target": "lg", "weight": 1.0}]}
    g = supernodes_by_profile(data)
    assert g["f1"] == g["f2"] and g["f1"].startswith("cluster 0 @ 1")
    assert g["f3"] == "f3" and g["f4"] == "f4" and g["e0"] == "e0"


# -- feature labels --------------------------------------------------------------------------------------------

def test_feature_labels(tiny_models, tmp_path):
    """Every layer's latents labelled by their top contexts (the SAE wing's latents.json in layer_L/): each recorded
    top activation is the transcoder's own activation at that (context, position), ≤ 1e-4, and no scanned token
    fires the latent higher; graph.json's feature nodes carry the label as clerp and their top contexts, and still
    pass the schema; `probescope circuit labels` does it from the CLI; another model's set is refused before
    anything is written."""
    import json

    from typer.testing import CliRunner

    from probescope.circuits.config import AttributeConfig
    from probescope.circuits.export import read_graph_json
    from probescope.circuits.labels import feature_labels, label_contexts, label_transcoders
    from probescope.circuits.run import run_circuit_attribute
    from probescope.cli import app
    from probescope.core.data import corpus_texts
    from probescope.core.sites import read_sites
    from probescope.sae import explain

    m, tok = tiny_models["tiny-llama"]
    tcs = make_transcoders(m)
    tc = tmp_path / "tc"
    save_transcoders(tcs, tc, model="tiny-llama")
    assert feature_labels(tc) == {}
    ids = label_contexts(tok, corpus_texts(), 12, 20)
    s = label_transcoders(m, tok, tcs, tc, ids, top_n=4, quiet=True)
    assert s["contexts"] == 12 and len(s["fired"]) == n_layers(m) and all(f > 0 for f in s["fired"])
    assert json.loads((tc / "transcoders.json").read_text())["latents"]["contexts"] == 12
    labels = feature_labels(tc)
    assert sorted(labels) == list(range(n_layers(m)))
    layer = 1
    stats = json.loads((tc / "layer_1" / "latents.json").read_text())
    acts = read_sites(m, ids, None, [f"mlp_in.{layer}"])
    dense = tcs[layer].encode(next(iter(acts.values())).reshape(-1, m.config.hidden_size)).dense().float()
    dense = dense.reshape(ids.shape[0], ids.shape[1], -1)
    if tok.bos_token_id is not None:
        dense[:, 0][ids[:, 0] == tok.bos_token_id] = 0
    checked = 0
    for j, rec in stats["latents"].items():
        j = int(j)
        for c in rec["top_contexts"]:
            assert abs(dense[c["row"], c["pos"], j].item() - c["activation"]) <= 1e-4 * max(1.0, c["activation"])
            assert c["token"] == tok.decode([int(ids[c["row"], c["pos"]])])
            checked += 1
        if rec["top_contexts"]:
            assert abs(dense[..., j].max().item() - rec["top_contexts"][0]["activation"]) <= 1e-4 * max(
                1.0, rec["top_contexts"][0]["activation"])
            assert labels[layer][j]["label"] == rec["label"] == explain(j, tc / "layer_1")
        else:
            assert dense[..., j].max().item() <= 0
    assert checked > 50
    out = tmp_path / "g"
    run_circuit_attribute(AttributeConfig(prompt="abc abc ab", transcoders=str(tc), out=str(out),
                                          max_feature_nodes=60, quiet=True), m, tok)
    graph = read_graph_json(out / "graph.json")
    feats = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats
    for n in feats:
        lab = labels[int(n["layer"])][n["feature"]]
        assert n["clerp"] == lab["label"] and n["top_contexts"] == lab["contexts"]
    assert any(n["top_contexts"] for n in feats)
    # the CLI labels a set in place; a set of another model is refused, nothing written
    res = CliRunner().invoke(app, ["circuit", "labels", "--transcoders", str(tc), "--contexts", "6",
                                   "--context-len", "16", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["contexts"] == 6 and r["n_layers"] == n_layers(m)
    assert json.loads((tc / "transcoders.json").read_text())["latents"]["contexts"] == 6
    narrow = [SAE(SAEConfig(d_in=32, n_latents=64, k=4, hook_in=f"mlp_in.{i}", hook_out=f"mlp_out.{i}"), seed=i)
              for i in range(n_layers(m))]
    save_transcoders(narrow, tmp_path / "narrow", model="tiny-llama")
    res = CliRunner().invoke(app, ["circuit", "labels", "--transcoders", str(tmp_path / "narrow")])
    assert res.exit_code != 0 and "d_in=32" in res.output and "another" in res.output
    assert not list((tmp_path / "narrow").glob("*/latents.json"))


def test_export_circuit_tracer_layout(tiny_models, tmp_path):
    """The exported set, read as circuit-tracer reads it (relu(TopK_k(x·W_encᵀ + b_enc))·W_dec + b_dec, per layer),
    gives our transcoders' output on real MLP inputs (≤ 1e-5, float32), with input/output scales folded in."""
    import json

    from probescope.circuits.export import export_circuit_tracer
    from probescope.core.io import load_tensors
    from probescope.core.sites import read_sites

    m, tok = tiny_models["tiny-llama"]
    tcs = make_transcoders(m)
    with torch.no_grad():
        tcs[1].in_scale.fill_(1.7)
        tcs[1].out_scale.fill_(0.6)
    out = export_circuit_tracer(tcs, m, tmp_path / "ct")
    meta = json.loads((out / "export.json").read_text())
    assert meta["n_layers"] == n_layers(m) and meta["k"] == 8
    acts = {str(k): v[0] for k, v in read_sites(m, IDS, None, [f"mlp_in.{i}" for i in range(n_layers(m))]).items()}
    for layer, tc in enumerate(tcs):
        sd = load_tensors(out / f"layer_{layer}.safetensors")
        assert set(sd) == {"W_enc", "W_dec", "b_enc", "b_dec"} and sd["W_enc"].shape == (128, 64)
        x = acts[f"mlp_in.{layer}"].float()
        pre = x @ sd["W_enc"].T + sd["b_enc"]
        gate = torch.zeros_like(pre).scatter_(-1, pre.topk(meta["k"], dim=-1).indices, 1.0)
        theirs = torch.relu(pre * gate) @ sd["W_dec"] + sd["b_dec"]
        with torch.no_grad():
            ours = tc.decode(tc.encode(x))
        assert (theirs - ours).abs().max() <= 1e-5, layer
    with pytest.raises(ValueError, match="d_in=32"):
        export_circuit_tracer([SAE(SAEConfig(d_in=32, n_latents=64, k=4, hook_in=f"mlp_in.{i}",
                                             hook_out=f"mlp_out.{i}")) for i in range(4)], m, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# -- skip connection (Paulo et al. 2025) -----------------------------------------------------------------------

def _with_skip(model, seed: int = 7, scale: float = 0.1):
    """Random transcoders with a random W_skip each (entries ~ N(0, (scale/√d)²): a skip term of the inputs' size)."""
    from probescope.circuits.transcoders import attach_skip

    tcs = make_transcoders(model)
    d = model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(seed)
    for tc in tcs:
        attach_skip(tc, torch.randn(d, d, generator=g) * scale / math.sqrt(d))
    return tcs


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_skip_exactness_oracle(tiny_models, name):
    """With skip connections the replacement model recomputes each skip term from the live MLP input (circuit-
    tracer's `skip + (acts − skip).detach()`): it still reproduces the model's logits (≤ 1e-4), and adding a node's
    vector moves feature pre-activations and demeaned logits by exactly its column (≤ 1e-5 on logits, ≤ 1e-3 on
    activations, relative to the column's largest entry where that exceeds 1: skip paths make some columns ~10, and
    float32 keeps ~1e-6 of that) — paths through later skips included. A graph that left the skips constant would miss them: the
    columns differ from the no-skip graph by more than 1e-3. Zeroing a feature in `direct` moves each demeaned logit
    by −edge (≤ 1e-5)."""
    from probescope.circuits.intervene import Intervener

    m, tok = tiny_models[name]
    tcs = _with_skip(m)
    g = attribute(m, tok, IDS, tcs, quiet=True)
    rm = ReplacementModel(m, check_transcoders(m, tcs), IDS, bos_token_id=tok.bos_token_id)
    assert all(w is not None for w in rm.skips)
    base = rm.forward()
    with torch.no_grad():
        ref = m(IDS).logits[0, -1]
    assert (base[1] - ref).abs().max() < 1e-4
    T, L, nf = g.n_pos, g.n_layers, g.n_features
    cols = [(nf + 0 * T + 2, {(0, 2): rm.errors[0, 2]}, None), (nf + 1 * T + 4, {(1, 4): rm.errors[1, 4]}, None),
            (g.token_slice.start + 3, None, {3: rm.tokens[3]})]
    for i in (0, nf // 2, nf - 1):
        layer, pos, _ = g.active_features[g.selected_features[i]].tolist()
        cols.append((i, {(layer, pos): rm.decoder_vecs[g.selected_features[i]]}, None))
    for col, mlp_add, embed_add in cols:
        d_feat, d_logit = _response(rm, g, base, mlp_add, embed_add)
        want = g.adjacency[g.token_slice.stop:, col]
        assert (d_logit - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max())), col
        assert (d_feat - g.adjacency[:nf, col]).abs().max() <= 1e-3 * max(1.0, float(g.adjacency[:nf, col].abs().max()))
    # the skips matter: the graph without them (same features, errors absorbing the skip) has other edges
    plain = [copy.deepcopy(t) for t in tcs]
    for t in plain:
        del t.W_skip
    g0 = attribute(m, tok, IDS, plain, quiet=True)
    if torch.equal(g0.selected_features, g.selected_features):
        assert (g0.adjacency[g.token_slice.stop:] - g.adjacency[g.token_slice.stop:]).abs().max() > 1e-3
    iv = Intervener(m, check_transcoders(m, tcs), IDS, bos_token_id=tok.bos_token_id)
    assert (iv.run([], "direct").logits - ref).abs().max() < 1e-4
    logit_rows = g.adjacency[g.n_nodes - g.n_logits:]
    for i in (0, nf // 3, nf - 1):
        layer, pos, f = g.active_features[g.selected_features[i]].tolist()
        r = iv.run([(layer, pos, f, 0.0)], "direct")
        assert (r.demeaned_change()[g.logit_tokens] + logit_rows[:, i]).abs().max() <= 1e-5


def test_skip_save_load_export(tiny_models, tmp_path):
    """A set with skips round-trips (W_skip in layer_L/skip.safetensors, the SAE folder unchanged in format), is
    refused with a wrong-shaped or non-finite W_skip, and exports W_skip to circuit-tracer's layout, where
    relu(TopK(x·W_encᵀ + b_enc))·W_dec + b_dec + x·W_skipᵀ is our transcoders' output (≤ 1e-5)."""
    import json

    from probescope.circuits.export import export_circuit_tracer
    from probescope.circuits.transcoders import SKIP_FILE, attach_skip, transcode
    from probescope.core.io import load_tensors
    from probescope.core.sites import read_sites

    m, tok = tiny_models["tiny-llama"]
    tcs = _with_skip(m)
    save_transcoders(tcs, tmp_path / "tc", model="tiny-llama")
    assert json.loads((tmp_path / "tc" / "transcoders.json").read_text())["skip"] is True
    from probescope.sae.formats import WEIGHTS, load_sae

    assert "W_skip" not in load_tensors(tmp_path / "tc" / "layer_0" / WEIGHTS)
    assert not hasattr(load_sae(tmp_path / "tc" / "layer_0"), "W_skip")  # the SAE wing reads the folder as before
    back = load_transcoders(tmp_path / "tc")
    for a, b in zip(tcs, back):
        assert torch.equal(a.W_skip, b.W_skip)
    with pytest.raises(ValueError, match="W_skip of shape"):
        attach_skip(back[0], torch.zeros(3, 64))
    bad = [copy.deepcopy(t) for t in back]
    with torch.no_grad():
        bad[2].W_skip[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 2 has 1 non-finite values in W_skip"):
        check_transcoders(m, bad)
    out = export_circuit_tracer(tmp_path / "tc", m, tmp_path / "ct")
    acts = {str(k): v[0] for k, v in read_sites(m, IDS, None, [f"mlp_in.{i}" for i in range(n_layers(m))]).items()}
    for layer, tc in enumerate(back):
        sd = load_tensors(out / f"layer_{layer}.safetensors")
        assert "W_skip" in sd
        x = acts[f"mlp_in.{layer}"].float()
        pre = x @ sd["W_enc"].T + sd["b_enc"]
        gate = torch.zeros_like(pre).scatter_(-1, pre.topk(8, dim=-1).indices, 1.0)
        theirs = torch.relu(pre * gate) @ sd["W_dec"] + sd["b_dec"] + x @ sd["W_skip"].T
        with torch.no_grad():
            assert (theirs - transcode(tc, x)).abs().max() <= 1e-5
    assert (tmp_path / "tc" / "layer_0" / SKIP_FILE).exists()


def test_circuit_configs_refuse_bad_values_by_name():
    """The circuit jobs' rules live in their configs' field metadata (model/seed/threads from core/options.py): the
    Python API refuses what the CLI refuses, naming the option, the value and the fix; cross-field rules stay code."""
    from probescope.circuits.config import AttributeConfig, InterveneConfig, LabelsConfig

    with pytest.raises(ValueError, match=r"--prompt '  ' is empty: pass --prompt 'The capital of France is'"):
        AttributeConfig(prompt="  ", transcoders="tc")
    with pytest.raises(ValueError, match="--transcoders '' is empty: pass --transcoders DIR"):
        AttributeConfig(prompt="abc")
    with pytest.raises(ValueError, match="--node-threshold 1.5 is out of range: it must be > 0 and ≤ 1"):
        AttributeConfig(prompt="abc", transcoders="tc", node_threshold=1.5)
    with pytest.raises(ValueError, match="--transcoder-format 'sae' is not one of auto"):
        AttributeConfig(prompt="abc", transcoders="tc", transcoder_format="sae")
    assert AttributeConfig(prompt="abc", transcoders="tc").model is None  # default: the transcoders' own model
    with pytest.raises(ValueError, match="--transcoders '' is empty"):
        LabelsConfig()
    with pytest.raises(ValueError, match="--context-len 1 is out of range: it must be ≥ 2"):
        LabelsConfig(transcoders="tc", context_len=1)
    with pytest.raises(ValueError, match="--graph '' is empty: pass --graph RUN"):
        InterveneConfig()
    with pytest.raises(ValueError, match="--modes .* is empty: use some of direct"):
        InterveneConfig(graph="g", modes=[])
    with pytest.raises(ValueError, match="nothing to do: pass --feature"):
        InterveneConfig(graph="g", check_edges=0)
    with pytest.raises(ValueError, match="--threads -2 is out of range"):
        InterveneConfig(graph="g", threads=-2)
