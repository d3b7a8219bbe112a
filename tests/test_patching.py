"""Activation and attribution patching on tiny models: batched = one forward per cell, attribution = autograd.

Tolerances: exact grids equal the per-cell loop to 1e-4 (batched float32 matmuls sum in another order);
attribution equals an independent autograd computation to 1e-4 relative.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probescope.core.sites import Site, site_hooks
from probescope.patching import activation_patching, agreement, attribution_patching, logit_diff
from probescope.patching.core import _mean_metric

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]


def pairs(seed: int = 0, P: int = 3, T: int = 7, vocab: int = 200):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(5, vocab, (P, T), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(5, vocab, (P,), generator=g)
    corrupt[:, 4] = torch.randint(5, vocab, (P,), generator=g)
    ans = torch.randint(5, vocab, (P,), generator=g).tolist()
    wrong = torch.randint(5, vocab, (P,), generator=g).tolist()
    return clean, corrupt, logit_diff(ans, wrong)


def loop_reference(model, clean, corrupt, metric, cells):
    """One forward per cell: patch the clean activation at (site, pos) into the corrupted run."""
    P = clean.shape[0]
    with torch.no_grad():
        m_clean = float(_mean_metric(metric, model(input_ids=clean).logits, P)[0])
        m_corr = float(_mean_metric(metric, model(input_ids=corrupt).logits, P)[0])
        out = []
        for site, pos in cells:
            saved = []
            with site_hooks(model, {site: lambda x: saved.append(x) or None}):
                model(input_ids=clean)

            def put(x, pos=pos, src=saved[0]):
                x = x.clone()
                if pos is None:
                    x[:] = src
                else:
                    x[:, pos] = src[:, pos]
                return x

            with site_hooks(model, {site: put}):
                m = float(_mean_metric(metric, model(input_ids=corrupt).logits, P)[0])
            out.append((m - m_corr) / (m_clean - m_corr))
    return np.array(out)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("family", ["resid_pre", "attn_head", "mlp_out", "resid_mid"])
def test_batched_exact_equals_one_forward_per_cell(tiny_models, name, family):
    model, _ = tiny_models[name]
    clean, corrupt, metric = pairs()
    grid = activation_patching(model, clean, corrupt, metric, family, batch_size=8)
    cells = [(_site(c), p) for c, p in grid.cells]
    ref = loop_reference(model, clean, corrupt, metric, cells)
    assert np.allclose(grid.values.ravel(), ref, atol=1e-4)
    assert grid.forwards < len(cells) + 2  # batched, not one forward per cell
    if family == "resid_pre":  # patching every position at layer 0 restores the clean run exactly
        assert grid.values.shape == (4, clean.shape[1])


def _site(name: str) -> Site:
    from probescope.core.sites import parse_site

    return parse_site(name)


@pytest.mark.parametrize("name", FAMILIES)
def test_attribution_equals_autograd_and_heads_sum_to_attn_out(tiny_models, name):
    model, _ = tiny_models[name]
    clean, corrupt, metric = pairs(1)
    P = clean.shape[0]
    at = attribution_patching(model, clean, corrupt, metric, "resid_pre")
    # independent: HF's hidden_states with autograd
    with torch.no_grad():
        hc = model(input_ids=clean, output_hidden_states=True).hidden_states
        m_clean = float(_mean_metric(metric, model(input_ids=clean).logits, P)[0])
    out = model(input_ids=corrupt, output_hidden_states=True)
    hs = out.hidden_states
    m = _mean_metric(metric, out.logits, P)[0]
    grads = torch.autograd.grad(m, [hs[L] for L in range(4)])
    denom = m_clean - float(m)
    ref = np.array([[float(((hc[L] - hs[L].detach()) * grads[L])[:, p].sum()) / denom for p in range(clean.shape[1])]
                    for L in range(4)])
    assert np.allclose(at.values, ref, rtol=1e-4, atol=1e-5)
    heads = attribution_patching(model, clean, corrupt, metric, "attn_head")
    attn = attribution_patching(model, clean, corrupt, metric, "attn_out")
    assert np.allclose(heads.values.sum(1), attn.values[:, 0], rtol=1e-4, atol=1e-5)  # bias patches to itself


def test_agreement_and_first_order_regime(tiny_models):
    """Where the corruption is small, attribution ≈ exact (the Taylor expansion holds)."""
    model, _ = tiny_models["tiny-llama"]
    clean, corrupt, metric = pairs(2)
    ex = activation_patching(model, clean, corrupt, metric, "mlp_out")
    at = attribution_patching(model, clean, corrupt, metric, "mlp_out")
    a = agreement(ex, at, k=2)
    assert set(a) == {"pearson", "spearman", "top2_overlap", "max_abs_diff"}
    assert -1 <= a["pearson"] <= 1


def test_bad_input(tiny_models):
    model, _ = tiny_models["tiny-llama"]
    clean, corrupt, metric = pairs()
    with pytest.raises(ValueError, match="aligned positions"):
        activation_patching(model, clean, corrupt[:, :-1], metric)
    with pytest.raises(ValueError, match="nothing to restore"):
        activation_patching(model, clean, clean, metric)
    with pytest.raises(ValueError, match="one scalar per row"):
        activation_patching(model, clean, corrupt, lambda logits: logits[:, -1])
    with pytest.raises(ValueError, match="cannot be patched"):
        activation_patching(model, clean, corrupt, metric, "attn_pattern")


def test_cli_patch_writes_grids_and_heatmaps(tmp_path):
    from probescope.cli import app

    data = tmp_path / "pairs.jsonl"
    # tiny-llama's tokenizer is byte-level: single-character answers are single tokens
    rows = [{"clean": "ab cd ab x", "corrupt": "ab cd cd x", "answer": "q", "wrong": "z"},
            {"clean": "ef gh ef y", "corrupt": "ef gh gh y", "answer": "q", "wrong": "z"}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["patch", "--model", "tiny-llama", "--task", str(data), "--families",
                                   "resid_pre,attn_head", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(m["families"]) == {"resid_pre", "attn_head"}
    assert "agreement" in m["families"]["attn_head"]
    grids = json.loads((out / "grids.json").read_text())
    assert np.array(grids["attn_head/exact"]["values"]).shape == (4, 4)
    page = (out / "report.html").read_text()
    assert "attn_head: exact patching" in page and "<svg" in page
    bad = CliRunner().invoke(app, ["patch", "--model", "tiny-llama", "--task", str(data), "--families", "heads",
                                   "--out", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "--families 'heads' is not one of resid_pre" in bad.output


def test_length_advice_that_works(tiny_models):
    """#36: a pair whose two prompts differ in length was told to use --align left, which then failed with another
    length error. Now: a pair's own mismatch names the fix that works (equal token counts) under either alignment;
    pairs of different lengths are told --align left, and with it they run."""
    from probescope.patching.tasks import tokenize_pairs

    _, tok = tiny_models["tiny-llama"]
    in_pair = [("ab cd ab x", "ab cd abc x", "q", "z")]
    for align in ("exact", "left"):
        with pytest.raises(ValueError, match="same token count") as e:
            tokenize_pairs(tok, in_pair, align)
        assert "--align left" not in str(e.value)
    across = [("ab cd ab x", "ab cd cd x", "q", "z"), ("ab cd abab x", "ab cd cdcd x", "q", "z")]
    with pytest.raises(ValueError, match="--align left"):
        tokenize_pairs(tok, across, "exact")
    p = tokenize_pairs(tok, across, "left")
    assert p.clean.shape == p.corrupt.shape and p.clean.shape[0] == 2


def test_patch_config_refuses_bad_values_by_name():
    """The rules live in PatchConfig's field metadata: the Python API refuses what the CLI refuses, naming the
    option, the value and what to use."""
    from probescope.patching import PatchConfig

    with pytest.raises(ValueError, match=r"--method 'fast' is not one of exact, attribution, both"):
        PatchConfig(method="fast")
    with pytest.raises(ValueError, match=r"the value 'heads'"):
        PatchConfig(families="resid_pre,heads")
    with pytest.raises(ValueError, match="--families .* is empty"):
        PatchConfig(families=" , ")
    with pytest.raises(ValueError, match="--n-prompts 0 is out of range"):
        PatchConfig(n_prompts=0)
    with pytest.raises(ValueError, match="--model '' is empty"):
        PatchConfig(model="")
    assert PatchConfig(families="resid_pre, attn_head").family_list == ["resid_pre", "attn_head"]
