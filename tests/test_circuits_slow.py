"""Circuit tracing on SmolLM2-135M: transcoders for all 30 layers (a token budget far too small for quality:
this checks the path, not the figures), a graph of a short prompt, the exactness oracle on the real model, and
the intervention check of its top edges."""

from __future__ import annotations

import pytest
import torch

from probescope.circuits import ReplacementModel, attribute, check_transcoders, load_transcoders, scores
from probescope.circuits.config import TranscodersConfig
from probescope.circuits.train import train_transcoders

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

PROMPT = "The capital of France is Paris. The capital of Germany is"


def test_smollm2_transcoders_graph_and_oracle(smollm2, tmp_path):
    m, tok = smollm2
    r = train_transcoders(TranscodersConfig(model="smollm2-135m", out=str(tmp_path / "tc"), tokens=1024,
                                            batch_size=1024, context_len=64, k=16, expansion=2, eval_contexts=4,
                                            quiet=True), m, tok)
    assert r["n_layers"] == 30 and len(r["fvu"]) == 30 and all(f == f for f in r["fvu"])
    tcs = load_transcoders(tmp_path / "tc")
    g = attribute(m, tok, PROMPT, tcs, max_feature_nodes=64, batch_size=32, quiet=True)
    assert g.n_features == 64 and g.n_pos == len(tok(PROMPT).input_ids)
    assert g.logit_strings[0] == " Berlin"
    s = scores(g)
    assert 0 <= s["replacement"] <= 1 and 0 <= s["completeness"] <= 1
    rm = ReplacementModel(m, check_transcoders(m, tcs), g.input_tokens[None], bos_token_id=tok.bos_token_id)
    mi0, lg0 = rm.forward()
    with torch.no_grad():
        ref = m(g.input_tokens[None]).logits[0, -1]
    assert (lg0 - ref).abs().max() < 1e-3  # with its error terms the replacement model is the model
    dm = lambda x: x - x.mean()  # noqa: E731
    T, nf = g.n_pos, g.n_features
    for col, add, emb in ((nf + 3 * T + 4, {(3, 4): rm.errors[3, 4]}, None),
                          (g.token_slice.start + 2, None, {2: rm.tokens[2]})):
        mi, lg = rm.forward(add, emb)
        d_logit = (dm(lg) - dm(lg0))[g.logit_tokens]
        assert (g.adjacency[g.n_nodes - g.n_logits:, col] - d_logit).abs().max() <= 1e-3 * max(1.0, float(d_logit.abs().max()))
        for i in range(0, nf, 7):
            layer, pos, f = g.active_features[g.selected_features[i]].tolist()
            d = (rm.preactivations(layer, mi[layer, pos]) - rm.preactivations(layer, mi0[layer, pos]))[f]
            assert abs(float(g.adjacency[i, col]) - float(d)) <= 1e-3 * max(1.0, abs(float(d)))
    # interventions on the real model's graph: in `direct` zeroing a feature moves the top logit by exactly −edge
    # (≤ 1e-3 relative, float32 over 30 layers); in the real model the change is finite and the check runs end to end
    from probescope.circuits import check_edges

    r = check_edges(m, g, tcs, n=5, modes=("direct", "model"), bos_token_id=tok.bos_token_id)
    assert len(r["edges"]) == 5 and r["summary"]["direct"]["sign_agreement"] == 1.0
    for e in r["edges"]:
        assert abs(e["direct"] - e["predicted"]) <= 1e-3 * max(1.0, abs(e["predicted"]))
        assert torch.isfinite(torch.tensor(e["model"]))
