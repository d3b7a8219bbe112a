"""What transforms the manifold: the form of the answer (circle vs unwrapped sum) is told apart on planted
activations; the answer-token and pair rules; patching effects equal a direct recomputation; the CLI end to end on
tiny-llama with intervals on the page.

Tolerances: planted activations carry the planted variable with radius/slope 5 and noise 0.05 per axis in 32-D, so
the planted hypothesis's held-out read-out R² is above 0.9 and beats its shuffled 95th percentile; patching effects
are compared to a direct hook-based recomputation to 1e-5 (float32 forwards of the same batch).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probescope.manifolds.move import Prompt, arithmetic_prompts
from probescope.manifolds.transform import (answer_metric, answer_tokens, component_effects, contrast_pairs, form_scores,
                                            prompt_ids, top_components, verdict)

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(period: int = 12) -> list[Prompt]:
    return [Prompt(f"{k} from {x}", 0, x, k) for k in range(1, period) for x in range(period)]


def _planted(prompts: list[Prompt], period: int, form: str, seed: int = 0, d: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(d, 3)))[0]
    x = np.array([p.value for p in prompts])
    k = np.array([p.offset for p in prompts])
    if form == "circle":
        th = 2 * np.pi * ((x + k) % period) / period
        Z = 5 * np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], 1)
    else:  # the start on its circle and the offset on a line, held separately: nothing computed from them
        th = 2 * np.pi * x / period
        Z = np.stack([5 * np.cos(th), 5 * np.sin(th), 5 * (k - k.mean()) / k.std()], 1)
    return Z @ Q.T + 0.05 * rng.normal(size=(len(prompts), d))


def test_planted_answer_circle_reads_as_rotation():
    P = _prompts()
    form = form_scores(_planted(P, 12, "circle"), P, 12, k=5, n_shuffles=5)
    a = form["answer_circle"]
    assert a["probe"] > 0.9 and a["probe"] > a["probe_p95"]
    assert form["start_circle"]["probe"] < 0.5  # the start alone is not what is held
    assert verdict(form).startswith("rotation")


def test_start_and_offset_held_separately_are_not_a_computed_answer():
    """The trap the control guards against: the unwrapped sum is read out well from a site that only holds x and
    k separately (it is linear in them), but that is no computation: the answer's circle is not read out."""
    P = _prompts()
    form = form_scores(_planted(P, 12, "separate"), P, 12, k=5, n_shuffles=5)
    s, a = form["sum_line"], form["answer_circle"]
    assert s["probe"] > 0.5 and s["control"] > 0.9  # the sum reads out, and so it does from x ⊕ k alone
    assert a["probe"] < a["probe_p95"] + 0.1 and a["control"] < 0.2
    assert form["start_circle"]["probe"] > 0.9 and form["offset"]["probe"] > 0.9
    v = verdict(form)
    assert v.startswith("not computed here") and "start" in v and "offset" in v


def test_single_offset_has_no_offset_or_sum_hypothesis():
    P = [Prompt("x", 0, x, 1) for x in range(7) for _ in range(4)]
    form = form_scores(_planted(P, 7, "circle"), P, 7, k=4, n_shuffles=3)
    assert form["offset"] is None  # one value of k
    assert form["answer_circle"] is not None


def test_answer_tokens_skip_a_shared_prefix_and_pairs_need_distinct_answers():
    prefix, first = answer_tokens([[220, 44, 1], [220, 45, 2], [220, 44, 3]])
    assert prefix == [220] and first == [44, 45, 44]
    assert answer_tokens([[5], [6]]) == ([], [5, 6])
    P = [Prompt("a", 0, x, 1) for x in range(3)]
    ids = [[1, 2], [1, 2], [1, 2, 3]]
    answers = [7, 8, 7]
    # (0 → 1): equal lengths, answers differ; (1 → 2): lengths differ; (2 → 0): lengths differ
    assert contrast_pairs(ids, P, answers, 3) == [(0, 1)]


def test_component_effects_equal_a_direct_patch(tiny_models):
    """The fold means equal patching one head by hand (clean head output into the corrupted run)."""
    from probescope.core.sites import Site, read_sites, site_hooks
    from probescope.manifolds.transform import _tokens

    model, tok = tiny_models["tiny-llama"]
    prompts, names, period = arithmetic_prompts("days")
    seqs = prompt_ids(tok, prompts)
    answers = [int(tok(" " + names[(p.value + p.offset) % period][0], add_special_tokens=False)["input_ids"][-1])
               for p in prompts]
    pairs = contrast_pairs(seqs, prompts, answers, period)[:4]
    eff = component_effects(model, tok, seqs, pairs, answer_metric(answers), folds=2, batch_size=64, seed=0)
    site = Site("attn_head", 1, 2)

    def direct(fold: np.ndarray) -> float:
        """Head 1.2's clean output written into the corrupted run by hand: its share of the fold's gap."""
        ids_c, mask = _tokens(tok, [seqs[pairs[i][0]] for i in fold])
        ids_x, _ = _tokens(tok, [seqs[pairs[i][1]] for i in fold])
        a = torch.tensor([answers[pairs[i][0]] for i in fold])
        w = torch.tensor([answers[pairs[i][1]] for i in fold])

        def metric(ids):
            with torch.no_grad():
                lg = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            return float((lg[torch.arange(len(fold)), a] - lg[torch.arange(len(fold)), w]).mean())

        src = read_sites(model, ids_c, mask, [site])[site]
        with site_hooks(model, {site: lambda x: src.to(x.dtype)}):
            patched = metric(ids_x)
        return (patched - metric(ids_x)) / (metric(ids_c) - metric(ids_x))

    folds = np.array_split(np.random.default_rng(0).permutation(len(pairs)), 2)
    got = eff["attn_head"]["mean"][1][2]
    assert got == pytest.approx((direct(folds[0]) + direct(folds[1])) / 2, abs=1e-5)
    lo, hi = eff["attn_head"]["lo"][1][2], eff["attn_head"]["hi"][1][2]
    assert lo <= got <= hi
    top = top_components(eff, 3)
    assert len(top) == 3 and abs(top[0]["effect"]) >= abs(top[-1]["effect"])


def test_cli_transform_end_to_end_tiny(tmp_path):
    from probescope.cli import app

    out = tmp_path / "tr"
    res = CliRunner().invoke(app, ["manifold", "transform", "--model", "tiny-llama", "--task", "days", "--folds", "2",
                                   "--n-shuffles", "2", "--top", "3", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(got["layers"]) == 4 and len(got["top"]) == 3
    assert got["top_ci"][0] <= got["top_effect"] <= got["top_ci"][1]
    assert all(r["verdict"] for r in got["layers"])
    page = (out / "report.html").read_text()
    assert "What transforms days" in page and "95% CI" in page
    # too few pairs for the folds: one red line naming the option, nothing written
    res = CliRunner().invoke(app, ["manifold", "transform", "--model", "tiny-llama", "--task", "days", "--folds", "5",
                                   "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--folds" in res.output
    assert not (tmp_path / "bad").exists()
