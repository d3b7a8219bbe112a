"""Probes that hold (#35) on SmolLM2-135M: slow (real model), each under a minute on one thread."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_affirmative_truth_probe_inverts_on_held_out_negations(smollm2):
    """Layer 11, 60 pairs per training topic, 20 per held-out topic: the affirmative rule scores held-out affirmative
    statements above held-out negations by >= 0.15 AUROC (this size: 0.61 vs 0.36; the full run: 0.65 vs 0.36, animals
    0.88 vs 0.15). (At this size the other rules' held-out gaps are within noise: they are not asserted.)"""
    from probescope.probes.negation import negation_table, pair_features, split_pairs
    from probescope.tasks.probing import HELDOUT_TOPICS, TRAIN_TOPICS, truth_pairs

    model, tok = smollm2
    tr, he = truth_pairs(60, 0, TRAIN_TOPICS), truth_pairs(20, 1, HELDOUT_TOPICS)
    f = pair_features(model, tok, tr + he, 11)
    parts = split_pairs(f.take(range(len(tr))))
    tests = {"test_topics": parts["test"], "heldout_topics": f.take(range(len(tr), len(f)))}
    rows = {r["rule"]: r for r in negation_table(parts["train"], tests, ["affirmative"], n_boot=50, quiet=True)}
    aff = rows["affirmative"]["heldout_topics"]
    assert aff["affirmative"]["auroc"] - aff["negated"]["auroc"] >= 0.15
