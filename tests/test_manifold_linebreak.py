"""Line breaks (issue #32 item 4): the generated texts hold their widths and token counts exactly, the behaviour fit
recovers a planted comparison, the read-outs find a planted remainder, and the job runs end to end on a tiny
model with a word-level tokenizer (and refuses a byte tokenizer with the reason)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from probescope.manifolds import linebreak as lb

WORDS = [w for n in range(2, 9) for w in [x for x in dict.fromkeys(lb.LB_WORDS) if len(x) == n][:16]]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Every test word is one token at a line start and after a space; '\\n' is one token (≤ 256 ids)."""
    vocab = {"<unk>": 0, "<bos>": 1, "<pad>": 2, "<eos>": 3, "Ċ": 4}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
        vocab.setdefault("Ġ" + w, len(vocab))
    assert len(vocab) <= 256
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def test_vocab_keeps_single_token_words(tok):
    v = lb.single_token_words(tok)
    kept = {w for ws in v.values() for w in ws}
    assert kept == set(WORDS)
    assert all(len(w) == n for n, ws in v.items() for w in ws)


def test_sweep_texts_hold_their_widths(tok):
    texts = lb.sweep(tok, [24, 40], 40, 3, seed=0)
    assert len(texts) == 40
    for t in texts:
        lines = t.text.split("\n")
        assert len(lines) == 4
        assert all(t.width - 2 <= len(x) <= t.width for x in lines[:-1]), t
        assert len(lines[-1]) == t.count and 0 <= t.remaining <= 15
        assert "<unk>" not in tok.convert_ids_to_tokens(tok(t.text)["input_ids"])
    # (width, remainder) cells are cycled: 40 texts over 2 widths × 16 remainders cover every cell
    assert {(t.width, t.remaining) for t in texts} == {(w, r) for w in (24, 40) for r in range(16)}


def test_pairs_differ_in_width_only(tok):
    ps = lb.pairs(tok, [24, 32], 10, 3, 12, seed=0)
    assert len(ps) == 10
    for a, b in ps:
        assert a.text.split("\n")[-1] == b.text.split("\n")[-1]
        assert a.remaining <= 1 and b.width == a.width + 12 and b.count == a.count
        assert all(b.width - 2 <= len(x) <= b.width for x in b.text.split("\n")[:-1])
        assert [len(x.split(" ")) for x in a.text.split("\n")] == [len(x.split(" ")) for x in b.text.split("\n")]
        assert len(tok(a.text)["input_ids"]) == len(tok(b.text)["input_ids"])


def test_lengths_hit_the_total_exactly():
    rng = random.Random(0)
    for total in range(17, 54):  # 6 words of 2-8 letters and 5 spaces: 17..53 characters
        ls = lb._lengths(rng, 6, total, [2, 3, 4, 5, 6, 7, 8])
        assert ls is not None and sum(ls) + 5 == total
    assert lb._lengths(rng, 6, 10, [2, 3]) is None  # 6 words of ≥ 2 letters need ≥ 17 characters


def test_behaviour_recovers_a_planted_comparison():
    rng = np.random.default_rng(0)
    texts = [lb.BreakText("", int(w), int(w - r)) for w in (24, 32, 40, 48) for r in range(16) for _ in range(3)]
    c = np.array([t.count for t in texts], float)
    w = np.array([t.width for t in texts], float)
    lo = -2.0 + 0.6 * c - 0.6 * w + 0.01 * rng.standard_normal(len(texts))
    b = lb.behaviour(texts, lo)
    assert b["b_count"] == pytest.approx(0.6, abs=0.01) and b["b_width"] == pytest.approx(-0.6, abs=0.01)
    assert b["b_count_ci"][0] > 0 and b["b_width_ci"][1] < 0 and b["fit_r2"] > 0.99
    assert b["auroc_due"] == 1.0
    # a model that only counts: the width coefficient's interval holds 0, the count alone explains the log-odds
    lo2 = 0.6 * c + 0.05 * rng.standard_normal(len(texts))
    b2 = lb.behaviour(texts, lo2)
    assert b2["b_width_ci"][0] < 0 < b2["b_width_ci"][1] and b2["count_only_r2"] > 0.99


def test_carried_finds_a_planted_remainder():
    rng = np.random.default_rng(1)
    texts = [lb.BreakText("", int(w), int(w - r)) for w in (24, 32, 40, 48) for r in range(16) for _ in range(2)]
    rem = np.array([t.remaining for t in texts], float)
    X = np.concatenate([rem[:, None], rng.standard_normal((len(texts), 20))], 1)
    out = lb.carried(X, texts, n_shuffles=5, seed=0)
    assert out["remaining"]["probe"] > 0.99 and out["remaining"]["probe_p95"] < 0.2
    assert out["width"]["probe"] < 0.2  # the width is independent of the remainder here


def test_metric_is_the_newline_log_odds():
    import torch

    logits = torch.zeros(2, 3, 5)
    logits[0, -1, 4] = np.log(3.0)  # p(newline) = 3/7 → log-odds log(3/4)
    m = lb.newline_logodds(4)(logits)
    assert m[0].item() == pytest.approx(np.log(3 / 4), abs=1e-5)
    assert m[1].item() == pytest.approx(np.log(1 / 4), abs=1e-5)


def test_run_linebreak_end_to_end(tmp_path, tiny_models, tok):
    from probescope.manifolds.config import LineBreakConfig
    from probescope.manifolds.run import run_linebreak

    model, _ = tiny_models["tiny-llama"]
    cfg = LineBreakConfig(model="tiny-llama", widths=[24, 32], n=32, pairs=8, folds=2, top=4, n_shuffles=2,
                          out=str(tmp_path / "lb"))
    r = run_linebreak(cfg, model, tok)
    saved = json.loads((tmp_path / "lb" / "linebreak.json").read_text())
    assert len(saved["pair_gaps"]) == 8 and len(saved["layers"]) == 4
    assert r["top"] and all("carries" in c for c in r["top"])
    heads = [c for c in r["top"] if c["site"].startswith("attn_head")]
    assert all(0 <= c["newline_attention"] <= 1 for c in heads)
    assert "per character counted" in r["verdict"]
    # the gap the effects share out is the mean pair gap (clean minus wide), fold by fold
    assert np.mean(saved["effects"]["gap_folds"]) == pytest.approx(np.mean(saved["pair_gaps"]), abs=1e-3)
    from probescope.manifolds import report  # noqa: F401  (registers the page section)
    from probescope.report.render import render_report

    page = render_report(tmp_path / "lb").read_text()
    assert "Line breaks:" in page and "attention on newlines" in page


def test_byte_tokenizer_is_refused_with_the_reason(tmp_path, tiny_models):
    from probescope.manifolds.config import LineBreakConfig
    from probescope.manifolds.run import run_linebreak

    model, btok = tiny_models["tiny-llama"]
    with pytest.raises(ValueError, match="one token for this tokenizer"):
        run_linebreak(LineBreakConfig(model="tiny-llama", pairs=10, folds=2, out=str(tmp_path / "x")), model, btok)
    assert not (tmp_path / "x" / "config.json").exists()


def test_config_refuses_too_few_pairs():
    from probescope.manifolds.config import LineBreakConfig

    with pytest.raises(ValueError, match="--pairs 6 with --folds 5"):
        LineBreakConfig(pairs=6, folds=5)
    with pytest.raises(ValueError, match="widths"):
        LineBreakConfig(widths=[8])


def test_last_position_grid_equals_a_full_forward_patch(tiny_models, tok):
    """The cached one-token patch equals patching the last position of the full corrupted forward by hand."""
    import torch

    from probescope.core.sites import Site, read_sites, site_hooks

    model, _ = tiny_models["tiny-llama"]
    ps = lb.pairs(tok, [24, 32], 6, 2, 12, seed=1)
    seqs = [(tok(a.text)["input_ids"], tok(b.text)["input_ids"]) for a, b in ps]
    metric = lb.newline_logodds(tok("\n", add_special_tokens=False)["input_ids"][0])
    grid, clean_m, bad_m = lb.last_position_grid(model, seqs, metric, cells_per_forward=5)

    def direct(site: Site | None) -> float:
        vals = []
        for a, b in seqs:
            ca, cb = torch.tensor([a]), torch.tensor([b])
            edits = {}
            if site is not None:
                src = read_sites(model, ca, None, [site])[site][:, -1]

                def fn(x):
                    x = x.clone()
                    x[:, -1] = src
                    return x

                edits = {site: fn}
            with torch.no_grad(), site_hooks(model, edits):
                vals.append(float(metric(model(input_ids=cb).logits)[0]))
        return float(np.mean(vals))

    assert bad_m == pytest.approx(direct(None), abs=1e-4)
    for site, got in ((Site("attn_head", 1, 2), grid["attn_head"][1, 2]), (Site("attn_head", 3, 0),
                                                                           grid["attn_head"][3, 0]),
                      (Site("mlp_out", 2), grid["mlp_out"][2, 0])):
        assert got == pytest.approx(direct(site), abs=1e-4), site
    clean_direct = np.mean([float(metric(model(input_ids=torch.tensor([a])).logits)[0]) for a, _ in seqs])
    assert clean_m == pytest.approx(clean_direct, abs=1e-4)
