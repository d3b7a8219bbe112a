"""Probes: every-prefix predictions, streaming, training, determinism, save/load, errors, metrics, data, CLI.

Fast: synthetic tensors and the tiny models only. Tolerances are stated where floats are compared.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from probescope.probes import (
    Acts, AttentionProbe, FitConfig, LinearProbe, MLPProbe, ProbeDataset, SparseProbe, load_dataset, load_probe,
    make_probe, metrics,
)
from probescope.probes.data import encode_labels, infer_classes, save_jsonl
from probescope.probes.tasks import TASKS, make_task
from probescope.probes.train import class_weights

torch.set_num_threads(1)  # much faster on a busy few-core machine (see probes/base.py torch_threads)
PREFIX_ATOL = 1e-5  # predict_prefixes vs separate calls, on probabilities
FAST = FitConfig(weight_decay=1e-2, max_epochs=30, patience=5)


def synthetic(n=240, T=10, D=16, n_classes=2, seed=0, left_pad=False):
    """Sequences whose mean over real tokens, projected on class directions, decides the label."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, D, generator=g)
    lens = torch.randint(min(2, T), T + 1, (n,), generator=g)
    pos = torch.arange(T)[None]
    mask = pos >= (T - lens[:, None]) if left_pad else pos < lens[:, None]
    W = torch.randn(D, n_classes, generator=g)
    s = ((x * mask[..., None]).sum(1) / lens[:, None]) @ W
    y = (s[:, 1] > s[:, 0]).long() if n_classes == 2 else s.argmax(1)
    return x, mask, y


def randomize(probe, seed=1):
    """Non-trivial parameters (zero-initialised queries would make every check pass trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return probe


def prefix_reference(probe, x, mask):
    """Call the probe separately on every prefix: [N, T(, C)] with NaN where a row has no token yet."""
    N, T = mask.shape
    outs = []
    for t in range(T):
        m = mask & (torch.arange(T)[None] <= t)
        ok = m.any(1)
        p = probe.predict_proba(x[ok], m[ok])
        full = torch.full((N, *p.shape[1:]), float("nan"))
        full[ok] = p
        outs.append(full)
    return torch.stack(outs, 1)


# ---------------------------------------------------------------------------------------------------------
# every-prefix predictions and streaming
# ---------------------------------------------------------------------------------------------------------

PREFIX_KINDS = [
    ("linear", {"pool": "mean"}), ("linear", {"pool": "last"}), ("linear", {"pool": "max"}),
    ("mlp", {"pool": "mean"}), ("attention", {"n_heads": 4}), ("attention", {"n_heads": 3, "mlp_hidden": 8}),
    ("attention", {"n_heads": 2, "layer_norm": True, "position_bias": False}),
]


@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kind,kw", PREFIX_KINDS)
def test_predict_prefixes_equals_each_prefix(kind, kw, n_classes, left_pad):
    x, mask, y = synthetic(n=60, n_classes=n_classes, left_pad=left_pad)
    probe = make_probe(kind, **kw).fit(x, y, mask, config=FitConfig(weight_decay=1e-2, max_epochs=2, max_iter=5))
    if kind == "attention":
        randomize(probe)
    got = probe.predict_prefixes(x, mask)
    ref = prefix_reference(probe, x, mask)
    has = ~torch.isnan(ref.reshape(*ref.shape[:2], -1)[..., 0])
    assert got.shape == ref.shape
    torch.testing.assert_close(got[has], ref[has], atol=PREFIX_ATOL, rtol=0)
    # the last position is the prediction for the whole sequence
    torch.testing.assert_close(got[:, -1], probe.predict_proba(x, mask), atol=PREFIX_ATOL, rtol=0)


@pytest.mark.parametrize("kw", [{"n_heads": 4}, {"n_heads": 2, "mlp_hidden": 8}])
def test_streaming_step_matches_prefixes(kw):
    x, mask, y = synthetic(n=40, n_classes=3)
    probe = randomize(AttentionProbe(**kw).fit(x, y, mask, config=FitConfig(weight_decay=0.0, max_epochs=1)))
    ref = probe.predict_prefixes(x, mask)
    state = probe.init_state(len(x))
    for t in range(x.shape[1]):
        p = probe.step(state, x[:, t], valid=mask[:, t])
        torch.testing.assert_close(p, ref[:, t], atol=PREFIX_ATOL, rtol=0)


def test_prefixes_stay_finite_with_large_scores():
    x, mask, y = synthetic(n=30)
    probe = AttentionProbe(n_heads=2).fit(x, y, mask, config=FitConfig(weight_decay=0.0, max_epochs=1))
    with torch.no_grad():
        probe.query.weight.normal_(0, 30.0)  # scores in the hundreds: a naive exp overflows
        probe.pos_w.fill_(5.0)
    got = probe.predict_prefixes(x, mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[:, -1], probe.predict_proba(x, mask), atol=PREFIX_ATOL, rtol=0)


def test_attention_starts_as_mean_pooling():
    x, mask, y = synthetic(n=20)
    probe = AttentionProbe(n_heads=4)
    probe.classes, probe.d_model = [0, 1], x.shape[-1]
    probe.build(1)
    a = probe.attention_weights(x, mask)
    expected = mask.float() / mask.sum(1, keepdim=True)
    torch.testing.assert_close(a, expected[..., None].expand_as(a), atol=1e-6, rtol=0)


def test_record_attention_and_dropout_option():
    x, mask, y = synthetic(n=80)
    probe = AttentionProbe(n_heads=2, attn_dropout=0.2, record_attention=True).fit(x, y, mask, config=FAST)
    probe.predict_proba(x, mask)
    assert probe.last_attention is not None and probe.last_attention.shape == (80, x.shape[1], 2)
    torch.testing.assert_close(probe.last_attention.sum(1), torch.ones(80, 2), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", [("linear", {}), ("mlp", {}), ("attention", {"n_heads": 2})])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_kinds_learn_binary_and_multiclass(kind, kw, n_classes):
    x, mask, y = synthetic(n=400, n_classes=n_classes)
    probe = make_probe(kind, **kw).fit(x[:300], y[:300], mask[:300], config=FAST)
    p = probe.predict_proba(x[300:], mask[300:])
    assert p.shape == ((100,) if n_classes == 2 else (100, n_classes))
    assert metrics.auroc(p, y[300:]) > 0.85
    assert probe.fit_info["optimizer"] == ("lbfgs" if kind == "linear" else "adamw")


def test_weight_decay_chosen_by_cv_and_recorded():
    x, mask, y = synthetic(n=150)
    probe = LinearProbe().fit(x, y, mask)
    grid = FitConfig().wd_grid
    assert probe.fit_info["weight_decay"] in grid
    assert set(probe.fit_info["cv_loss_by_weight_decay"]) == {f"{w:g}" for w in grid}


def test_early_stopping_stops_before_max_epochs():
    x, mask, y = synthetic(n=200)
    probe = MLPProbe(hidden=32).fit(x, y, mask, config=FitConfig(weight_decay=0.0, max_epochs=400, patience=3, lr=1e-2))
    assert probe.fit_info["epochs"] < 400


def test_class_weights_sqrt_inverse_frequency():
    y = torch.tensor([0] * 90 + [1] * 10)
    w = class_weights(y, 2, "sqrt")
    assert w[1] / w[0] == pytest.approx(3.0, rel=1e-5)  # sqrt(90 / 10)
    assert float((w[y]).mean()) == pytest.approx(1.0, rel=1e-5)
    assert class_weights(y, 2, None).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kind,kw", [("linear", {"pool": "max"}), ("mlp", {}), ("attention", {"n_heads": 2, "attn_dropout": 0.1})])
def test_fixed_seed_gives_identical_results(kind, kw):
    x, mask, y = synthetic(n=120)
    cfg = FitConfig(max_epochs=5, seed=3)
    a = make_probe(kind, **kw).fit(x, y, mask, config=cfg).predict_proba(x, mask)
    b = make_probe(kind, **kw).fit(x, y, mask, config=cfg).predict_proba(x, mask)
    assert torch.equal(a, b)


def test_linear_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, _, y = synthetic(n=300, T=1)
    X = x[:, 0]
    lam = 1e-2
    ours = LinearProbe().fit(X, y, config=FitConfig(weight_decay=lam, class_weight=None)).predict_proba(X)
    Xs = StandardScaler().fit_transform(X.numpy())
    sk = LogisticRegression(C=1 / (lam * len(y)), tol=1e-8, max_iter=5000).fit(Xs, y.numpy()).predict_proba(Xs)[:, 1]
    np.testing.assert_allclose(ours.numpy(), sk, atol=2e-3)  # same objective, different solvers


# ---------------------------------------------------------------------------------------------------------
# save / load and refusing the wrong activations
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", [("linear", {"pool": "last"}), ("mlp", {}), ("attention", {"n_heads": 2, "mlp_hidden": 4})])
def test_save_load_roundtrip(tmp_path, kind, kw):
    x, mask, y = synthetic(n=100, n_classes=3)
    labels = [["a", "b", "c"][i] for i in y]
    probe = make_probe(kind, **kw).fit(Acts(x, mask, "tiny-llama", 2), labels, config=FAST)
    probe.save(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert cfg["kind"] == kind and cfg["layer"] == 2 and cfg["model_id"] == "tiny-llama"
    assert cfg["d_model"] == 16 and cfg["classes"] == ["a", "b", "c"]
    assert (tmp_path / "p" / "probe.safetensors").exists()
    back = load_probe(tmp_path / "p")
    torch.testing.assert_close(back.predict_proba(x, mask), probe.predict_proba(x, mask), atol=0, rtol=0)
    assert back.predict(x[:3], mask[:3]) == probe.predict(x[:3], mask[:3])


def test_refuses_wrong_width_model_and_layer():
    x, mask, y = synthetic(n=60)
    probe = LinearProbe().fit(Acts(x, mask, "tiny-llama", 1), y, config=FAST)
    with pytest.raises(ValueError, match="width 16.*got width 8"):
        probe.predict_proba(torch.randn(4, 5, 8))
    with pytest.raises(ValueError, match="model 'tiny-llama'.*'tiny-gpt2'"):
        probe.predict_proba(Acts(x, mask, "tiny-gpt2", 1))
    with pytest.raises(ValueError, match="layer 1, got activations of layer 3"):
        probe.predict_proba(Acts(x, mask, "tiny-llama", 3))
    with pytest.raises(ValueError, match="not 'tiny-gpt2'"):
        probe.check_model("tiny-gpt2")
    with pytest.raises(RuntimeError, match="not trained"):
        LinearProbe().predict_proba(x, mask)


# ---------------------------------------------------------------------------------------------------------
# bad labels and bad data
# ---------------------------------------------------------------------------------------------------------


def test_label_errors_name_the_value_and_fix():
    x, mask, _ = synthetic(n=6)
    with pytest.raises(ValueError, match="all 6 labels are 1.*two classes"):
        LinearProbe().fit(x, [1] * 6, mask)
    with pytest.raises(ValueError, match=r"label 2 is nan \(missing\)"):
        LinearProbe().fit(x, [0, 1, float("nan"), 1, 0, 1], mask)
    with pytest.raises(ValueError, match="6 examples of activations but 5 labels"):
        LinearProbe().fit(x, [0, 1, 0, 1, 0], mask)
    with pytest.raises(ValueError, match="empty"):
        LinearProbe().fit(torch.zeros(0, 3, 4), [], None)
    with pytest.raises(ValueError, match=r"label 1 is 'maybe'.*known: \['no', 'yes'\]"):
        encode_labels(["yes", "maybe"], ["no", "yes"])
    with pytest.raises(ValueError, match="no labels"):
        infer_classes([])
    with pytest.raises(ValueError, match="mask has shape"):
        LinearProbe().fit(x, [0, 1] * 3, torch.ones(6, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no tokens in the mask"):
        LinearProbe().fit(x, [0, 1] * 3, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="unknown probe kind 'linaer'"):
        make_probe("linaer")


def test_dataset_errors():
    with pytest.raises(ValueError, match="is empty"):
        ProbeDataset([], [])
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        ProbeDataset(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="text 1 is ''"):
        ProbeDataset(["a", "", "c"], [0, 1, 0])


def test_jsonl_and_csv_loading(tmp_path):
    ds = make_task("sentiment", 20)
    save_jsonl(ds, tmp_path / "d.jsonl")
    back = load_dataset(tmp_path / "d.jsonl")
    assert back.texts == ds.texts and back.labels == ds.labels and back.splits == ds.splits
    (tmp_path / "d.csv").write_text('text,label,domain\n"good, really",1,x\nbad,0,y\nfine,1,x\n')
    c = load_dataset(tmp_path / "d.csv")
    assert c.texts[0] == "good, really" and c.labels == [1, 0, 1] and c.domain_names == ["x", "y"]
    (tmp_path / "bad.csv").write_text("sentence,label\nhi,1\n")
    with pytest.raises(ValueError, match="no 'text' column"):
        load_dataset(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("text,label\nhi,1\nho,nan\n")
    with pytest.raises(ValueError, match="label 1 is None"):
        load_dataset(tmp_path / "nan.csv")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(tmp_path / "d.txt") if (tmp_path / "d.txt").write_text("x") else None


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------


def test_metrics_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(y * 0.5 + rng.normal(size=300), 1)  # rounding makes ties
    assert metrics.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.f1(1 / (1 + np.exp(-s)), y) == pytest.approx(f1_score(y, s > 0), abs=1e-12)
    y3 = rng.integers(0, 3, 300)
    p3 = rng.dirichlet([1, 1, 1], 300) + np.eye(3)[y3] * 0.3
    p3 /= p3.sum(1, keepdims=True)
    assert metrics.auroc(p3, y3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"), abs=1e-12)
    assert metrics.f1(p3, y3) == pytest.approx(f1_score(y3, p3.argmax(1), average="macro"), abs=1e-12)
    assert metrics.accuracy(p3, y3) == pytest.approx((p3.argmax(1) == y3).mean())


def test_ece_and_recall_at_fpr():
    assert metrics.ece(np.array([1.0, 0.0, 1.0, 0.0]), np.array([1, 0, 1, 0])) == pytest.approx(0.0)
    assert metrics.ece(np.array([0.9] * 10), np.array([1] * 5 + [0] * 5)) == pytest.approx(0.4)
    control = np.linspace(0, 1, 101)  # threshold at 1% FPR on control: the 99th percentile -> 0.99
    r = metrics.recall_at_fpr(np.array([0.995, 0.5, 1.0, 0.2]), np.array([1, 1, 1, 0]), control, fpr=0.01)
    assert r["threshold"] == pytest.approx(0.99) and r["recall"] == pytest.approx(2 / 3) and r["fpr_eval"] == 0.0
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.accuracy([0.1, 0.2, 0.3], [0, 1])


# ---------------------------------------------------------------------------------------------------------
# sparse probe on a random ReLU encoder
# ---------------------------------------------------------------------------------------------------------


class ReLUEncoder:
    """A small random SAE encoder; latents 5 and 17 are planted to fire with class 1."""

    def __init__(self, d=16, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, n, generator=g) / d**0.5
        self.b = torch.zeros(n)

    def encode(self, x):
        return torch.relu(x @ self.W + self.b)

    def explain(self, i: int) -> str:
        return f"feature #{i}"


@pytest.mark.parametrize("select", ["diff", "l1"])
def test_sparse_probe_picks_planted_latents(tmp_path, select):
    enc = ReLUEncoder()
    g = torch.Generator().manual_seed(0)
    n, T = 300, 6
    y = torch.randint(0, 2, (n,), generator=g)
    # build activations whose encoding fires latents 5 and 17 for class 1: move along those encoder columns
    x = torch.randn(n, T, 16, generator=g) * 0.3
    direction = enc.W[:, 5] / enc.W[:, 5].norm() + enc.W[:, 17] / enc.W[:, 17].norm()
    x += y[:, None, None] * 2.0 * direction
    mask = torch.ones(n, T, dtype=torch.bool)
    probe = SparseProbe(enc, k=4, select=select).fit(x[:200], y[:200], mask[:200], config=FAST)
    chosen = probe.chosen()
    assert len(chosen) == 4 and {5, 17} <= {c["latent"] for c in chosen}
    assert all(c["label"] == f"feature #{c['latent']}" for c in chosen)
    assert metrics.auroc(probe.predict_proba(x[200:], mask[200:]), y[200:]) > 0.95
    probe.save(tmp_path / "s")
    back = load_probe(tmp_path / "s", encoder=enc)
    torch.testing.assert_close(back.predict_proba(x, mask), probe.predict_proba(x, mask), atol=0, rtol=0)
    assert back.chosen() == chosen
    torch.testing.assert_close(probe.predict_prefixes(x[:10], mask[:10])[:, -1], probe.predict_proba(x[:10], mask[:10]),
                               atol=PREFIX_ATOL, rtol=0)
    with pytest.raises(ValueError, match="needs its SAE"):
        load_probe(tmp_path / "s").predict_proba(x, mask)


def test_sparse_probe_on_a_real_sae_from_the_cli(tmp_path):
    """`probe train --kind sparse --sae DIR` with a probescope SAE (sparse Latents) and its latents.json labels."""
    from typer.testing import CliRunner

    from probescope.cli import app
    from probescope.core.io import atomic_write_json
    from probescope.core.models import load_model
    from probescope.sae import ModelSource, TrainConfig, sae_config_for, save_sae, train_sae
    from probescope.probes.tasks import make_task

    model, tok = load_model("tiny-llama")
    src = ModelSource(model, tok, make_task("topic", 40, 0).texts, 1, context_len=32)
    sae = train_sae(src, sae_config_for(src, None, k=8, expansion=4), TrainConfig(tokens=4096, batch_size=256))
    save_sae(sae, tmp_path / "sae")
    atomic_write_json(tmp_path / "sae" / "latents.json",
                      {"latents": {str(j): {"label": f"label {j}", "top_contexts": []} for j in range(sae.n_latents)}})
    res = CliRunner().invoke(app, ["probe", "train", "--model", "tiny-llama", "--task", "topic", "--n", "40",
                                   "--layer", "1", "--kind", "sparse", "--sae", str(tmp_path / "sae"),
                                   "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.0 <= out["test"]["auroc"] <= 1.0
    back = load_probe(tmp_path / "run" / "probe", encoder=sae)
    chosen = back.chosen()
    assert len(chosen) == 32 and all(c["label"] == f"label {c['latent']}" for c in chosen)


# ---------------------------------------------------------------------------------------------------------
# tasks, activations, CLI on a tiny model
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_builtin_tasks(name):
    ds = make_task(name, 40, seed=1)
    assert len(ds.domain_names) >= 2 and set(TASKS[name].shift) <= set(ds.domain_names)
    assert make_task(name, 40, seed=1).texts == ds.texts  # seeded
    for d in ds.domain_names:
        labels = [lab for lab, dom in zip(ds.labels, ds.domains) if dom == d]
        counts = {c: labels.count(c) for c in set(labels)}
        assert max(counts.values()) - min(counts.values()) <= 1  # balanced
        for split in ("train", "val", "test"):
            assert {ds.labels[i] for i in range(len(ds)) if ds.domains[i] == d and ds.splits[i] == split} == set(ds.classes)
    assert len(set(ds.texts)) == len(ds.texts)
    if name == "topic":
        assert len(ds.classes) == 4
    with pytest.raises(ValueError, match="unknown task"):
        make_task("nope")


def test_truth_task_labels_are_correct():
    from probescope.probes.tasks import CITIES

    country = dict(CITIES)
    ds = make_task("truth", 60)
    for text, label in zip(ds.texts, ds.labels):
        words = text.rstrip(".").split()
        city = next((c for c in country if text.startswith(c) or text.startswith(f"The city of {c} ")), None)
        if city is not None:
            assert (text.rstrip(".").endswith(country[city]) != (" not " in text)) == bool(label), text
        if words[0].isdigit():
            a, b = int(words[0]), int(words[-1])
            holds = a > b if ("larger" in text or "greater" in text) else a < b
            assert (holds != (" not " in text)) == bool(label), text


def test_featurize_tiny_model_and_drop_first():
    from probescope import load_model
    from probescope.probes import featurize

    model, tok = load_model("tiny-llama")
    texts = ["hi", "a longer text here"]
    a = featurize(model, tok, texts, [1, 3], quiet=True)
    b = featurize(model, tok, texts, [1], quiet=True, drop_first=False)
    assert a[1].model_id == "tiny-llama" and a[3].layer == 3 and a[1].x.shape[-1] == 64
    assert (b[1].mask.sum(1) - a[1].mask.sum(1)).tolist() == [1, 1]
    torch.testing.assert_close(a[1].x, b[1].x)


def test_cli_train_eval_sweep_shift(tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    common = ["--model", "tiny-llama", "--n", "40", "--weight-decay", "0.01", "--max-epochs", "5"]
    res = r.invoke(app, ["probe", "train", *common, "--task", "topic", "--layer", "1", "--kind", "attention", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    for f in ("config.json", "metrics.json", "probe/probe.json", "probe/probe.safetensors"):
        assert (tmp_path / "t" / f).exists()
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert {"val", "test"} <= set(m) and "auroc" in m["test"]
    res = r.invoke(app, ["probe", "eval", "--probe", str(tmp_path / "t"), "--model", "tiny-llama", "--task", "topic",
                         "--n", "40", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["probe", "eval", "--probe", str(tmp_path / "t"), "--model", "tiny-gpt2", "--task", "topic", "--n", "40"])
    assert res.exit_code == 2 and "trained on model 'tiny-llama'" in res.output
    res = r.invoke(app, ["probe", "sweep", *common, "--layers", "0,2", "--kinds", "linear-last,mlp", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    sm = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert sm["series"]["mlp"]["layers"] == [0, 2] and len(sm["series"]["mlp"]["val"]) == 2
    best = sm["best"]["linear-last"]
    assert best["val"] == max(sm["series"]["linear-last"]["val"])  # chosen on validation only
    assert (tmp_path / "s" / "sweep.svg").read_text().startswith("<svg")
    page = (tmp_path / "t" / "report.html").read_text()
    assert "ROC: attention probe" in page and "false positive rate" in page  # a ROC curve per split
    res = r.invoke(app, ["probe", "shift", *common, "--layer", "1", "--kinds", "linear,attention", "--out", str(tmp_path / "h"),
                         "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout.strip().splitlines()[-1])  # --json: one object on stdout, no table
    assert printed["run_dir"] == str(tmp_path / "h") and printed["report"].endswith("report.html")
    assert [row["kind"] for row in printed["rows"]] == ["linear", "attention"]
    assert "AUROC: trained on affirmative" in (tmp_path / "h" / "report.html").read_text()  # the shift heatmap
    hm = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert hm["train_domain"] == "affirmative" and hm["eval_domain"] == "negated"
    assert [row["kind"] for row in hm["rows"]] == ["linear", "attention"]
    res = r.invoke(app, ["probe", "train", "--model", "tiny-llama", "--task", "nope"])
    assert res.exit_code == 2 and "--task 'nope' is not one of truth" in res.output


def test_threads_reach_capture_and_fits(tmp_path, monkeypatch, tiny_models):
    """--threads N (from core/options.py's RunOptions) is the thread count of the capture and of every probe fit;
    0, the default, keeps the wing's one thread for both (measured fastest on a busy few-core machine)."""
    from probescope.probes import runner
    from probescope.probes.config import DataConfig, TrainConfig

    seen: list[tuple[str, int | None]] = []
    real_featurize, real_fit_config = runner.featurize, runner.fit_config

    def featurize(*a, **kw):
        seen.append(("capture", kw.get("threads")))
        return real_featurize(*a, **kw)

    def fit_config(*a, **kw):
        cfg = real_fit_config(*a, **kw)
        seen.append(("fit", cfg.threads))
        return cfg

    monkeypatch.setattr(runner, "featurize", featurize)
    monkeypatch.setattr(runner, "fit_config", fit_config)
    model, tok = tiny_models["tiny-llama"]
    for threads, want in ((2, 2), (0, 1)):
        seen.clear()
        cfg = TrainConfig(data=DataConfig(model="tiny-llama", task="truth", n_per_domain=20, threads=threads),
                          layer=1, out=str(tmp_path / f"t{threads}"))
        cfg.fit.max_epochs = 2
        res = runner.run_train(cfg, model, tok)
        assert seen == [("capture", want), ("fit", want)]
        assert json.loads((tmp_path / f"t{threads}" / "config.json").read_text())["data"]["threads"] == threads
        assert res["layer"] == 1
