"""Probes that hold (#35): the default-domain rule, training rules that survive negation, the regimes.

Fast: synthetic tensors and the tiny models only. Tolerances are stated where floats are compared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probescope.probes import FitConfig, LinearProbe
from probescope.probes.train import domain_weights

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------
# the default-domain rule
# ---------------------------------------------------------------------------------------------------------


def test_domain_weights_give_every_domain_the_same_total():
    w = domain_weights(["a", "a", "a", "b", "c", "c"])
    # N / (D * n_d): 6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2)
    torch.testing.assert_close(w, torch.tensor([2 / 3] * 3 + [2.0] + [1.0] * 2), atol=1e-6, rtol=0)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)
    assert domain_weights(["x"] * 4).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="no domains"):
        domain_weights([])


def test_sample_weights_match_sklearn():
    """Weighted logistic fit = scikit-learn's with the same sample weights and L2 (atol 2e-3 on probabilities:
    same objective, different solvers)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 8, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(300, generator=g) > 0).long()
    sw = torch.rand(300, generator=g) * 3 + 0.2
    lam = 1e-2
    ours = LinearProbe().fit(X, y, config=FitConfig(weight_decay=lam, class_weight=None), sample_weight=sw)
    Xs = StandardScaler().fit_transform(X.numpy())
    # ours: sum(w l) / sum(w) + lam/2 |W|^2  ==  sklearn's C * sum(w l) + 1/2 |W|^2 with C = 1 / (lam * sum(w))
    sk = LogisticRegression(C=1 / (lam * float(sw.sum())), tol=1e-8, max_iter=5000)
    sk.fit(Xs, y.numpy(), sample_weight=sw.numpy())
    np.testing.assert_allclose(ours.predict_proba(X).numpy(), sk.predict_proba(Xs)[:, 1], atol=2e-3)
    unweighted = LinearProbe().fit(X, y, config=FitConfig(weight_decay=lam, class_weight=None))
    assert not torch.allclose(unweighted.head.weight, ours.head.weight, atol=1e-3)  # the weights do something
    with pytest.raises(ValueError, match="finite positive weights"):
        LinearProbe().fit(X, y, config=FitConfig(weight_decay=lam), sample_weight=-sw)


def test_train_without_domain_mixes_on_purpose_and_says_so(tmp_path):
    """`probe train` on a task with two domains and no --domain: domain-balanced weights, a note in the summary
    and the test split scored per domain; with --domain, one domain and no note."""
    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    common = ["--model", "tiny-llama", "--n", "30", "--weight-decay", "0.01", "--task", "truth", "--layer", "1"]
    res = r.invoke(app, ["probe", "train", *common, "--out", str(tmp_path / "mix")])
    assert res.exit_code == 0, res.output
    assert "domain-balanced weights" in res.output and "--domain NAME" in res.output
    m = json.loads((tmp_path / "mix" / "metrics.json").read_text())
    mix = m["mixed_domains"]
    assert mix["domains"] == ["affirmative", "negated"] and mix["weights"] == "domain-balanced"
    assert set(mix["test_by_domain"]) == {"affirmative", "negated"}
    assert m["fit"]["sample_weights"] == "given"
    res = r.invoke(app, ["probe", "train", *common, "--domain", "negated", "--out", str(tmp_path / "one"), "--json"])
    assert res.exit_code == 0, res.output
    one = json.loads(res.stdout.strip().splitlines()[-1])
    assert "mixed_domains" not in one and "sample_weights" not in one["fit"]
