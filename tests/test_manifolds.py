"""Concept manifolds: a planted circle is found, fitted and moved exactly; shuffled baselines stay low on it; bad
input is refused; the CLI runs end to end on tiny-llama.

Tolerances: the planted circle has radius 5 and noise 0.05 per axis in 32-D, so its R² is above 0.99 (the noise
left in the plane is < 1e-3 of its variance); edits are checked to 1e-8 (float64 algebra); shuffled R² on the
planted data stays below 0.9 (7 means of 30 examples each: the shuffled means sit within noise of one point).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probescope.manifolds import (Example, FindConfig, MoveConfig, fit_circle, fit_curve, layer_report, make,
                                  value_means)
from probescope.manifolds.acts import concept_acts, token_index
from probescope.manifolds.concepts import ConceptData
from probescope.manifolds.move import circle_edit, edit_hooks, LayerFit, build_rows, arithmetic_prompts, subspace_edit
from probescope.manifolds.run import check_concept

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(seed: int = 0, n: int = 210, d: int = 32, period: int = 7, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    v = np.arange(n) % period
    Q = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    off = rng.normal(size=d)
    th = 2 * np.pi * v / period
    X = off + 5 * np.stack([np.cos(th), np.sin(th)], 1) @ Q.T + noise * rng.normal(size=(n, d))
    return X, v, Q


def test_planted_circle_found_and_fitted():
    X, v, Q = planted()
    rep = layer_report(X, v, 7, k=5, n_shuffles=5)
    assert rep["r2_plane"] > 0.99 and rep["r2"] > 0.99
    assert rep["loo"] < 2.0 and rep["cv"] < 3.0          # degrees
    assert rep["dims90"] == 2
    # the shuffled-value baseline is far below on the same activations
    assert rep["baseline"]["r2_plane"] < 0.9 and rep["baseline_p95"]["r2_plane"] < rep["r2_plane"]
    assert rep["baseline"]["loo"] > 30 and rep["p"]["r2_plane"] == pytest.approx(1 / 6)
    # with the 7 clusters kept but their order permuted, the circle fits worse and reads angles badly
    assert rep["baseline_order_p95"]["r2_plane"] < 0.95 and rep["baseline_order"]["loo"] > 30
    assert rep["p_order"]["r2_plane"] == pytest.approx(1 / 6)
    # a linear read-out of (cos θ, sin θ) from single examples is near perfect on held-out examples, nil when shuffled
    assert rep["probe"] > 0.99 and rep["baseline"]["probe"] < 0.1
    # the fitted plane is the planted one
    vals, M = value_means(X, v)
    c = fit_circle(M, vals, 7, 5)
    P = c.plane()
    assert np.linalg.svd(P.T @ Q, compute_uv=False).min() > 0.999


def test_noise_has_no_circle_beyond_its_baseline():
    rng = np.random.default_rng(1)
    X, v = rng.normal(size=(210, 32)), np.arange(210) % 7
    rep = layer_report(X, v, 7, k=5, n_shuffles=10)
    assert rep["p"]["r2_plane"] > 0.05  # real values are no better than shuffled ones on pure noise
    assert rep["loo"] > 30 and rep["probe"] < 0.1


def circ_diff(a, b, period):
    """Signed difference a − b on the circle of `period` values, in [−period/2, period/2)."""
    return np.mod(np.asarray(a, dtype=float) - b + period / 2, period) - period / 2


def test_circle_edit_puts_the_point_where_asked():
    X, v, _ = planted(seed=2)
    vals, M = value_means(X, v)
    c = fit_circle(M, vals, 7, 5)
    target = (v + 3) % 7
    Y = circle_edit(c, X, target, strength=1.0)
    # the circle reads each edited point as the target angle, at radius 1 (the fitted circle's own point)
    np.testing.assert_allclose(circ_diff(c.value(Y), target, 7), 0, atol=1e-8)
    assert ((c.value(Y) >= 0) & (c.value(Y) < 7)).all()
    np.testing.assert_allclose(np.linalg.norm(c.coords(Y), axis=1), 1.0, atol=1e-8)
    # the edit moves nothing outside the circle's plane, and lands on the target point inside it
    Qp = c.plane()
    R = (Y - X) - (Y - X) @ Qp @ Qp.T
    assert np.abs(R).max() < 1e-8
    P = c.point(2 * np.pi * target / 7)
    np.testing.assert_allclose((Y - P) @ Qp, 0, atol=1e-8)
    # strength scales the radius, never the angle
    Y2 = circle_edit(c, X, target, strength=2.0)
    np.testing.assert_allclose(np.linalg.norm(c.coords(Y2), axis=1), 2.0, atol=1e-8)
    np.testing.assert_allclose(circ_diff(c.value(Y2), target, 7), 0, atol=1e-8)
    # the subspace edit copies the target's component in the PCA space
    Z = subspace_edit(c.U, X, M[target])
    np.testing.assert_allclose((Z - M[target]) @ c.U.T, 0, atol=1e-8)


def test_planted_curve_fitted():
    rng = np.random.default_rng(3)
    v = np.arange(400) % 40
    t = v / 40 * np.pi
    B = np.linalg.qr(rng.normal(size=(32, 3)))[0]
    X = 5 * np.stack([np.cos(t), np.sin(t), np.cos(2 * t)], 1) @ B.T + 0.05 * rng.normal(size=(400, 32))
    rep = layer_report(X, v, None, k=5, n_shuffles=3)
    assert rep["r2"] > 0.99 and rep["loo"] < 1.0 and rep["cv"] < 1.0
    assert rep["baseline"]["loo"] > 5
    assert rep["probe"] > 0.95 and rep["baseline"]["probe"] < 0.1  # held-out linear read-out of the value
    vals, M = value_means(X, v)
    c = fit_curve(M, vals, 5)
    assert np.abs(c.value(M) - vals).max() < 1.0


def test_generated_concepts():
    for name, period in [("days", 7), ("months", 12), ("hours", 24), ("numbers", None), ("linecount", None)]:
        d = make(name, 300, seed=0)
        assert d.period == period and len(d.examples) > 100
        for e in d.examples[:50]:
            assert 0 <= e.position < len(e.text)
        if name == "linecount":  # the value is the count of characters since the last newline, through position
            for e in d.examples[:50]:
                assert e.position - e.text.rfind("\n", 0, e.position) == e.value
        if name == "days":
            assert {e.text[e.position - len(d.label(e.value)) + 1:e.position + 1] for e in d.examples[:7]} <= set(d.labels.values())
    assert make("days", 70, 1).examples[0].text == make("days", 70, 1).examples[0].text


def test_concept_corpus_mixes_every_concept_reproducibly():
    """concept_corpus: n paragraphs of 2–5 template sentences, every day and month named somewhere in 400 of them,
    the same for the same seed, another for another; n < 1 refused."""
    import re

    from probescope.manifolds.concepts import DAYS, MONTHS, concept_corpus

    c = concept_corpus(400, seed=3)
    assert len(c) == 400 and c == concept_corpus(400, seed=3) and c != concept_corpus(400, seed=4)
    assert all(2 <= len(re.findall(r"[.]( |$)", p)) <= 5 for p in c)
    text = " ".join(c)
    assert all(d in text for d in DAYS) and all(m in text for m in MONTHS) and ":00" in text
    with pytest.raises(ValueError, match="n=0"):
        concept_corpus(0)


def test_bad_input_errors(tmp_path):
    few = ConceptData("x", [Example("a b c", 0, i % 2) for i in range(10)])
    with pytest.raises(ValueError, match="at least 3 values"):
        check_concept(few, 4)
    thin = ConceptData("x", [Example("a b c", 0, i % 5) for i in range(12)])
    with pytest.raises(ValueError, match="need.*≥ 4"):
        check_concept(thin, 4)
    with pytest.raises(ValueError, match="outside the text"):
        token_index([(0, 1)], 5, "abc")
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "abc", "position": 9, "value": 1}) + "\n")
    from probescope.manifolds import read_concept

    with pytest.raises(ValueError, match="outside the text"):
        read_concept(f)
    with pytest.raises(ValueError, match="concept="):
        make("weekdays", 10)
    with pytest.raises(ValueError, match="--n-shuffles 0 is out of range"):
        FindConfig(n_shuffles=0)
    with pytest.raises(ValueError, match="--layer-sets '3\\+x'"):
        MoveConfig(layer_sets="3+x")


def test_concept_acts_read_the_right_token(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ex = [Example("See you on Monday.", 16, 0), Example("ab\ncd ef", 4, 2), Example("See you on Monday.", 3, 1)]
    acts = concept_acts(model, tok, ex, [1, 3])
    from probescope.core.capture import capture

    for i, e in enumerate(ex):
        enc = tok(e.text, return_offsets_mapping=True)
        j = token_index(enc["offset_mapping"], e.position, e.text)
        ref = capture(model, [e.text], [1, 3], tokenizer=tok)
        for L in (1, 3):
            np.testing.assert_allclose(acts[L][i], ref[L][0, j].numpy(), atol=1e-5)


def test_edit_hooks_write_the_edit_into_the_forward(tiny_models):
    """The hook puts exactly the edited vector at the value token of resid_post.L (read back at that site)."""
    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("days")
    rows = build_rows(tok, prompts, period, limit=5)
    d = model.config.hidden_size
    rng = np.random.default_rng(0)
    M = rng.normal(size=(7, d))
    fit = LayerFit(fit_circle(M, np.arange(7), 7, 5), M, M.mean(0), rng.normal(size=(len(prompts), d)))
    from probescope.core.sites import site_hooks

    seen = []
    make_hooks = edit_hooks("circle", {1: fit}, rows, 1.0, at=None)  # the full forward: edit at rows.pos
    sl = np.arange(5)
    hooks = make_hooks(sl)
    with torch.no_grad(), site_hooks(model, {**hooks}):
        with site_hooks(model, {"resid_pre.2": lambda x: seen.append(x.clone())}):
            model(input_ids=rows.ids[sl], attention_mask=rows.mask[sl])
    got = seen[0][torch.arange(5), rows.pos[sl]].double().numpy()
    np.testing.assert_allclose(circ_diff(fit.circle.value(got), rows.target[sl], 7), 0, atol=1e-3)


@pytest.mark.parametrize("method", ["circle", "patch_all"])
def test_answers_with_a_cached_prefix_equal_the_full_forward(tiny_models, method):
    """`Answers` runs the text before the value token once (KV cache) and only the rest per pass; with an edit at the
    value token its top answers equal those of the full forward with the same edit at rows.pos (exact: argmax of the
    same logits up to float32 reordering, on a model whose value-token logits are not tied)."""
    from probescope.manifolds.move import Answers, fit_layers

    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("days")
    rows = build_rows(tok, prompts, period, limit=30, seed=1)
    fits = fit_layers(model, tok, prompts, [1, 2], period, 5)
    cand = list(range(100, 107))  # any 7 distinct tokens (the tiny tokenizer spells the day names letter by letter)
    fast = Answers(model, rows.ids, rows.mask, rows.pos, cand, batch_size=8)
    from probescope.core.sites import site_hooks

    full_hooks = edit_hooks(method, fits, rows, 2.0, at=None)
    b = np.arange(len(rows.target))
    with torch.no_grad(), site_hooks(model, full_hooks(b)):
        logits = model(input_ids=rows.ids, attention_mask=rows.mask).logits
    ref = logits[torch.arange(len(b)), rows.mask.sum(1) - 1][:, cand]
    top2 = ref.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
    got = fast(edit_hooks(method, fits, rows, 2.0))
    assert clear.sum() >= 20
    np.testing.assert_array_equal(got[clear], ref.argmax(-1).numpy()[clear])
    # the same object scores the unedited rows again afterwards (the cache was cropped back to the prefix)
    with torch.no_grad():
        plain = model(input_ids=rows.ids, attention_mask=rows.mask).logits[torch.arange(len(b)), rows.mask.sum(1) - 1]
    np.testing.assert_array_equal(fast()[clear], plain[:, cand].argmax(-1).numpy()[clear])


def test_answers_score_multi_token_names_by_their_log_probability(tiny_models):
    """The tiny byte tokenizer spells ' Monday' in 7 tokens: the answer is the name with the highest summed
    log-probability, checked against one full forward per (row, name) with the circle edit at the value token
    (rows whose top two names are within 1e-4 nats are skipped; float32 reordering is far below that)."""
    from probescope.core.sites import site_hooks
    from probescope.manifolds.move import Answers, answer_ids, fit_layers

    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("days")
    rows = build_rows(tok, prompts, period, limit=10, seed=2)
    cand = answer_ids(tok, names)
    assert min(map(len, cand)) > 1
    fits = fit_layers(model, tok, prompts, [2], period, 5)
    got = Answers(model, rows.ids, rows.mask, rows.pos, cand, batch_size=4)(edit_hooks("circle", fits, rows, 1.5))
    hooks = edit_hooks("circle", fits, rows, 1.5, at=None)
    checked = 0
    for r in range(len(rows.target)):
        n = int(rows.mask[r].sum())
        lps = []
        for c in cand:
            x = torch.cat([rows.ids[r, :n], torch.tensor(c)])[None]
            with torch.no_grad(), site_hooks(model, hooks(np.array([r]))):
                lp = model(input_ids=x).logits[0, n - 1:-1].log_softmax(-1)
            lps.append(float(lp[torch.arange(len(c)), torch.tensor(c)].sum()))
        top = np.sort(lps)[::-1]
        if top[0] - top[1] > 1e-4:
            assert got[r] == int(np.argmax(lps))
            checked += 1
    assert checked >= 8


def test_cli_end_to_end_tiny(tmp_path):
    from probescope.cli import app

    out = tmp_path / "find"
    res = CliRunner().invoke(app, ["manifold", "find", "--model", "tiny-llama", "--concept", "days", "--n", "56",
                                   "--n-shuffles", "2", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["n_values"] == 7 and len(got["layers"]) == 4
    assert (out / "manifold.json").exists() and "mf-view" in (out / "report.html").read_text()
    out2 = tmp_path / "move"
    res = CliRunner().invoke(app, ["manifold", "move", "--model", "tiny-llama", "--task", "days", "--layers", "1,2",
                                   "--layer-sets", "1+2", "--limit", "20", "--out", str(out2), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert {r["layers"] for r in got["rows"]} == {"1", "2", "1+2"}
    assert all(0 <= r["success"] <= 1 and r["n"] == 20 for r in got["rows"])
    # bad input: one red line, exit code 2, nothing written
    res = CliRunner().invoke(app, ["manifold", "find", "--model", "tiny-llama", "--concept", "days", "--n", "14",
                                   "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "needs ≥ 4" in res.output.replace("\n", " ")
    assert not (tmp_path / "bad").exists()


def test_edit_offsets_and_bad_positions():
    from probescope.manifolds.move import edit_offsets

    assert edit_offsets("concept", 3) == [0] and edit_offsets("last", 3) == [3]
    assert edit_offsets("readers", 3) == [1, 2, 3] and edit_offsets("all", 3) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="--positions 'middle'"):
        edit_offsets("middle", 3)
    with pytest.raises(ValueError, match="positions"):
        MoveConfig(positions="middle")


@pytest.mark.parametrize("positions", ["last", "readers", "all"])
def test_reader_edits_land_on_their_positions(tiny_models, positions):
    """At every edited (template, offset) the edited residual reads as the target on that position's own circle
    (read back at the next block's input); positions not edited are untouched."""
    from probescope.core.sites import site_hooks
    from probescope.manifolds.move import edit_offsets, position_fits

    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("next-day")
    rows = build_rows(tok, prompts, period, limit=12, seed=3)
    fits = position_fits(model, tok, prompts, [1], period, 5, positions)
    assert {t for t, _ in fits[1]} == {0, 1}
    sl = np.arange(len(rows.target))
    seen, plain = [], []
    with torch.no_grad():
        with site_hooks(model, {"resid_pre.2": lambda x: plain.append(x.clone())}):
            model(input_ids=rows.ids[sl], attention_mask=rows.mask[sl])
        with site_hooks(model, edit_hooks("circle", fits, rows, 1.0, at=None)(sl)):
            with site_hooks(model, {"resid_pre.2": lambda x: seen.append(x.clone())}):
                model(input_ids=rows.ids[sl], attention_mask=rows.mask[sl])
    got, ref = seen[0], plain[0]
    touched = torch.zeros(got.shape[:2], dtype=torch.bool)
    for r in sl:
        after = int(rows.mask[r].sum() - 1 - rows.pos[r])
        for o in edit_offsets(positions, after):
            p = int(rows.pos[r]) + o
            touched[r, p] = True
            circle = fits[1][(int(rows.template[r]), o)].circle
            x = got[r, p].double().numpy()[None]
            assert circ_diff(circle.value(x), rows.target[r:r + 1], period)[0] < 1e-3
    assert torch.equal(got[~touched], ref[~touched])


@pytest.mark.parametrize("method", ["circle", "patch_all"])
def test_reader_edits_with_a_cached_prefix_equal_the_full_forward(tiny_models, method):
    """`Answers` (prefix cached, suffix from the value token) with edits at the value token and every reader gives
    the full forward's top answers with the same edits."""
    from probescope.core.sites import site_hooks
    from probescope.manifolds.move import Answers, position_fits

    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("next-day")
    rows = build_rows(tok, prompts, period, limit=40, seed=4)
    fits = position_fits(model, tok, prompts, [1, 2], period, 5, "all")
    cand = list(range(100, 107))
    b = np.arange(len(rows.target))
    with torch.no_grad(), site_hooks(model, edit_hooks(method, fits, rows, 2.0, at=None)(b)):
        logits = model(input_ids=rows.ids, attention_mask=rows.mask).logits
    ref = logits[torch.arange(len(b)), rows.mask.sum(1) - 1][:, cand]
    top2 = ref.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
    got = Answers(model, rows.ids, rows.mask, rows.pos, cand, batch_size=8)(edit_hooks(method, fits, rows, 2.0))
    assert clear.sum() >= 25
    np.testing.assert_array_equal(got[clear], ref.argmax(-1).numpy()[clear])


def test_cli_move_at_the_readers_tiny(tmp_path):
    from probescope.cli import app

    res = CliRunner().invoke(app, ["manifold", "move", "--model", "tiny-llama", "--task", "next-day", "--layers", "1",
                                   "--layer-sets", "1+2", "--positions", "readers", "--limit", "10", "--out",
                                   str(tmp_path / "mv"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["positions"] == "readers" and {r["layers"] for r in got["rows"]} == {"1", "1+2"}


def test_context_prompts_keep_the_value_and_its_readers(tiny_models):
    """Fit prompts: the task's prompt after a neutral lead sentence — the same value at the same character, the same
    tokens from the value token on, never an evaluated prompt's text; the leads name no day or month."""
    import re

    from probescope.manifolds.concepts import DAYS, FIT_LEADS, MONTHS
    from probescope.manifolds.move import context_prompts, prompt_batch

    _, tok = tiny_models["tiny-llama"]
    for lead in FIT_LEADS:
        assert not set(re.findall(r"[a-z]+", lead.lower())) & {w.lower() for w in DAYS + MONTHS}, lead
    prompts, names, period = arithmetic_prompts("next-day")
    extra = context_prompts("next-day", 3)
    assert len(extra) == 3 * len(prompts)
    own = {p.text for p in prompts}
    ids, mask, pos, last = prompt_batch(tok, prompts)
    xids, xmask, xpos, xlast = prompt_batch(tok, extra)
    for j, e in enumerate(extra):
        i = j % len(prompts)  # the evaluated prompt it extends
        p = prompts[i]
        assert e.text not in own and e.text.endswith(p.text)
        assert (e.value, e.template, e.offset) == (p.value, p.template, p.offset)
        name = names[e.value]
        assert e.text[e.position - len(name) + 1:e.position + 1] == name
        assert xids[j, xpos[j]:xlast[j] + 1].tolist() == ids[i, pos[i]:last[i] + 1].tolist()
    for bad in (0, 17):
        with pytest.raises(ValueError, match=f"--fit-contexts {bad}"):
            context_prompts("next-day", bad)
    with pytest.raises(ValueError, match="fit.contexts"):
        MoveConfig(fit_contexts=17)
    assert MoveConfig().fit_contexts == 0  # default: fit on the task's own prompts, as before


def _resid(model, tok, p, layer: int, offset: int) -> np.ndarray:
    """The residual after block `layer` at the value token + offset of prompt p, from its own forward."""
    from probescope.core.capture import capture

    enc = tok(p.text, return_offsets_mapping=True)
    j = token_index(enc["offset_mapping"], p.position, p.text)
    return capture(model, [p.text], [layer], tokenizer=tok)[layer][0, j + offset].double().numpy()


def test_fits_on_context_prompts_land_at_the_right_positions(tiny_models):
    """With fit prompts, each (template, offset) circle and per-value mean comes from the fit prompts' residuals at
    that offset from their value token (read in their own forwards), `acts` stays the evaluated prompts' own, and
    the edits land: every edited position reads as the target on its circle. Without, the means are the evaluated
    prompts' (the default, unchanged)."""
    from probescope.core.sites import site_hooks
    from probescope.manifolds.move import context_prompts, edit_offsets, fit_layers, position_fits

    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("next-day")
    extra = context_prompts("next-day", 2)
    fits = position_fits(model, tok, prompts, [1], period, 5, "all", fit_on=extra)[1]
    plain = position_fits(model, tok, prompts, [1], period, 5, "all")[1]
    assert fits.keys() == plain.keys()
    for (t, o), fit in fits.items():
        for v in (0, 4):
            mine = [p for p in extra if p.template == t and p.value == v]
            ref = np.mean([_resid(model, tok, p, 1, o) for p in mine], 0)
            np.testing.assert_allclose(fit.means[v], ref, atol=1e-4)
            i = next(i for i, p in enumerate(prompts) if p.template == t and p.value == v)
            np.testing.assert_allclose(plain[(t, o)].means[v], _resid(model, tok, prompts[i], 1, o), atol=1e-4)
            np.testing.assert_allclose(fit.acts[i], plain[(t, o)].acts[i], atol=1e-4)
        assert not np.allclose(fit.means, plain[(t, o)].means, atol=1e-3)  # fitted on other prompts
    rows = build_rows(tok, prompts, period, limit=12, seed=3)
    sl = np.arange(len(rows.target))
    seen = []
    with torch.no_grad(), site_hooks(model, edit_hooks("circle", {1: fits}, rows, 1.0, at=None)(sl)):
        with site_hooks(model, {"resid_pre.2": lambda x: seen.append(x.clone())}):
            model(input_ids=rows.ids[sl], attention_mask=rows.mask[sl])
    for r in sl:
        for o in edit_offsets("all", int(rows.mask[r].sum() - 1 - rows.pos[r])):
            x = seen[0][r, int(rows.pos[r]) + o].double().numpy()[None]
            circle = fits[(int(rows.template[r]), o)].circle
            assert circ_diff(circle.value(x), rows.target[r:r + 1], period)[0] < 1e-3
    # at the value token: the same split (fit on the extra prompts, acts of the evaluated ones)
    at = fit_layers(model, tok, prompts, [1], period, 5, fit_on=extra)[1]
    np.testing.assert_allclose(at.means[3], np.mean([_resid(model, tok, p, 1, 0) for p in extra if p.value == 3], 0),
                               atol=1e-4)
    np.testing.assert_allclose(at.acts[5], _resid(model, tok, prompts[5], 1, 0), atol=1e-4)


def test_cli_move_fits_on_context_prompts_tiny(tmp_path):
    from probescope.cli import app

    res = CliRunner().invoke(app, ["manifold", "move", "--model", "tiny-llama", "--task", "next-month", "--layers",
                                   "1", "--positions", "last", "--fit-contexts", "2", "--limit", "10", "--out",
                                   str(tmp_path / "mv"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["fit_prompts"] == 2 * got["n_prompts"] == 24
    res = CliRunner().invoke(app, ["manifold", "move", "--model", "tiny-llama", "--task", "next-month", "--layers",
                                   "1", "--fit-contexts", "99", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--fit-contexts 99" in res.output and not (tmp_path / "bad").exists()


def test_text_folds_keep_texts_whole_and_layer_sets_read_out_together():
    """Folds by text put every text on one side; a value carried by two planted layers, each under a noise that the
    other cancels, is read out better from both side by side than from either, far above shuffled values."""
    from probescope.manifolds.geometry import readout_report, two_folds

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    f = two_folds(np.arange(400) % 7, rng, groups)
    assert all(len(set(f[groups == g])) == 1 for g in range(40)) and 150 < f.sum() < 250
    v = rng.integers(0, 30, 400)
    A, B = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    A[:, 0] += 0.1 * v
    B[:, 0] = 0.2 * v - A[:, 0] + 0.05 * B[:, 0]  # each layer carries the value under noise that the other cancels
    one = readout_report(A, v, None, 5, groups=groups)
    both = readout_report(np.concatenate([A, B], 1), v, None, 5, groups=groups)
    assert both["probe"] > one["probe"] + 0.05 and both["probe"] > 0.9 and both["baseline_p95"] < 0.1


def test_linecount_reads_every_word_of_a_text():
    d = make("linecount", 600, seed=1)
    texts = {e.text for e in d.examples}
    assert len(d.examples) > 20 * len(texts)
    from collections import Counter

    assert min(Counter(e.value for e in d.examples).values()) >= 8
    with pytest.raises(ValueError, match="--probe-sets '4\\+x'"):
        FindConfig(probe_sets="4+x")


def test_find_reads_layer_sets_tiny(tmp_path):
    from probescope.manifolds import run_find

    r = run_find(FindConfig(model="tiny-llama", concept="linecount", n=400, n_shuffles=2, threads=1,
                            out=str(tmp_path / "f")))
    assert r["folds_by_text"] and len(r["probe_sets"]) == 1 and r["probe_sets"][0]["layers"].count("+") == 2
    assert "read together" in __import__("probescope.manifolds.report", fromlist=["x"]).find_sentence(r)
    with pytest.raises(ValueError, match="not among the layers read"):
        run_find(FindConfig(model="tiny-llama", concept="linecount", n=400, layers=[1, 2], probe_sets="1+3",
                            out=str(tmp_path / "g")))
    assert not (tmp_path / "g").exists()
