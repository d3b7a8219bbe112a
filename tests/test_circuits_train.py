"""Transcoders for every layer in one pass: figures, the set loads and explains a prompt, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

import probescope.circuits.train as ctrain
from probescope.circuits import attribute, load_transcoders, scores
from probescope.circuits.config import TranscodersConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out, **kw) -> TranscodersConfig:
    base = dict(model="tiny-llama", out=str(out), tokens=2048, batch_size=256, context_len=32, k=8, expansion=2,
                eval_contexts=8, checkpoint_every=2, quiet=True, skip_fit_tokens=512)
    return TranscodersConfig(**{**base, **kw})


def test_train_all_layers_and_attribute(tiny_models, tmp_path):
    m, tok = tiny_models["tiny-llama"]
    r = ctrain.train_transcoders(_cfg(tmp_path / "tc"), m, tok)
    assert r["n_layers"] == 4 and r["steps"] == 8
    assert all(0 < f < 1 for f in r["fvu"])  # better than predicting the mean, per layer (held-out)
    assert all(0 < x <= 8 for x in r["l0"])
    assert 0 <= r["agreement"] <= 1 and r["kl"] >= 0 and math.isfinite(r["kl"])
    assert len(r["kl_one_layer"]) == len(r["agreement_one_layer"]) == 4
    assert all(k >= 0 and math.isfinite(k) for k in r["kl_one_layer"])
    assert all(0 <= a <= 1 for a in r["agreement_one_layer"])
    assert not (tmp_path / "tc" / "checkpoint").exists()
    assert r["labelled_contexts"] == 64  # labels written with the set (the label test is in test_circuits.py)
    assert all((tmp_path / "tc" / f"layer_{i}" / "latents.json").exists() for i in range(4))
    tcs = load_transcoders(tmp_path / "tc")
    assert [t.cfg.hook_in for t in tcs] == [f"mlp_in.{i}" for i in range(4)]
    g = attribute(m, tok, "abc abc", tcs, quiet=True)
    s = scores(g)
    assert 0 <= s["replacement"] <= 1 and 0 <= s["completeness"] <= 1


def test_resume_is_exact(tiny_models, tmp_path, monkeypatch):
    m, tok = tiny_models["tiny-llama"]
    ctrain.train_transcoders(_cfg(tmp_path / "a"), m, tok)
    real, calls = ctrain._pairs, {"n": 0}

    def crash(*a, **kw):  # the 2 skip-fit batches, then a crash after 3 training steps (a checkpoint at step 2)
        calls["n"] += 1
        if calls["n"] == 6:  # step 6 of 8; the checkpoint of step 4 is on disk
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ctrain, "_pairs", crash)
    with pytest.raises(KeyboardInterrupt):
        ctrain.train_transcoders(_cfg(tmp_path / "b"), m, tok)
    assert (tmp_path / "b" / "checkpoint" / "progress.json").exists()
    resumed = {"n": 0}

    def count(*a, **kw):
        resumed["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(ctrain, "_pairs", count)
    ctrain.train_transcoders(_cfg(tmp_path / "b"), m, tok)
    assert resumed["n"] == 4 + 1  # steps 5..8, then one held-out batch: it resumed, it did not start over
    for ta, tb in zip(load_transcoders(tmp_path / "a"), load_transcoders(tmp_path / "b")):
        for k, v in ta.state_dict().items():
            assert torch.allclose(v, tb.state_dict()[k], atol=1e-6), k
    with pytest.raises(ValueError, match="k: 8 in the checkpoint|checkpoint of other settings"):
        monkeypatch.setattr(ctrain, "_pairs", crash)
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            ctrain.train_transcoders(_cfg(tmp_path / "c"), m, tok)
        monkeypatch.setattr(ctrain, "_pairs", real)
        ctrain.train_transcoders(_cfg(tmp_path / "c", k=4), m, tok)


def test_bad_config():
    with pytest.raises(ValueError, match="--tokens 100 is less than one batch of 256"):
        TranscodersConfig(tokens=100, batch_size=256)
    with pytest.raises(ValueError, match="--k 0 is out of range: it must be ≥ 1"):
        TranscodersConfig(k=0)
    with pytest.raises(ValueError, match="--checkpoint-every -1 is out of range"):
        TranscodersConfig(checkpoint_every=-1)
    with pytest.raises(ValueError, match="--model '' is empty"):
        TranscodersConfig(model="")


def test_train_with_skip(tiny_models, tmp_path, monkeypatch):
    """--skip: each transcoder carries a trained W_skip; on held-out tokens every layer's FVU (features + skip
    against the MLP output) is below the same budget's FVU without the skip (the linear part of a tiny model's MLP
    is large); the set saves and loads with its skips, the graph of a prompt builds, and a resumed run equals an
    uninterrupted one (≤ 1e-6)."""
    m, tok = tiny_models["tiny-llama"]
    plain = ctrain.train_transcoders(_cfg(tmp_path / "plain", label_contexts=0), m, tok)
    r = ctrain.train_transcoders(_cfg(tmp_path / "skip", skip=True, label_contexts=0), m, tok)
    assert all(fs < fp for fs, fp in zip(r["fvu"], plain["fvu"])), (r["fvu"], plain["fvu"])
    tcs = load_transcoders(tmp_path / "skip")
    assert all(t.W_skip.shape == (64, 64) and float(t.W_skip.abs().max()) > 0 for t in tcs)
    g = attribute(m, tok, "abc abc", tcs, quiet=True)
    assert 0 <= scores(g)["replacement"] <= 1
    real, calls = ctrain._pairs, {"n": 0}

    def crash(*a, **kw):  # the 2 skip-fit batches, then a crash after 3 training steps (a checkpoint at step 2)
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ctrain, "_pairs", crash)
    with pytest.raises(KeyboardInterrupt):
        ctrain.train_transcoders(_cfg(tmp_path / "b", skip=True, label_contexts=0), m, tok)
    monkeypatch.setattr(ctrain, "_pairs", real)
    ctrain.train_transcoders(_cfg(tmp_path / "b", skip=True, label_contexts=0), m, tok)
    for ta, tb in zip(tcs, load_transcoders(tmp_path / "b")):
        assert torch.allclose(ta.W_skip, tb.W_skip, atol=1e-6)
        for k, v in ta.state_dict().items():
            assert torch.allclose(v, tb.state_dict()[k], atol=1e-6), k


def test_skip_fit_leaves_out_sinks_and_recovers_a_linear_map():
    """`fit_skips`: over several batches of a map that is linear except for sink tokens (output 1000× the rest, as
    SmolLM2's first token writes at layers 1-3), the fit recovers the linear map (max error ≤ 0.02 with ridge
    λ = 1e-2 × the mean eigenvalue) because the sinks are left out; fitted with them in, it is far off."""
    g = torch.Generator().manual_seed(0)
    d, L = 16, 2
    W = [torch.randn(d, d, generator=g) / d ** 0.5 for _ in range(L)]
    xs = [torch.randn(128, d, generator=g) for _ in range(4)]

    def pairs(model, ids, L_, drop_first, layers=None):
        x = xs[int(ids)]
        out = {}
        for i in layers:
            y = x @ W[i].T
            y[::32] = 1000.0 * torch.randn(y[::32].shape, generator=torch.Generator().manual_seed(i))  # sinks
            out[i] = (x, y)
        return out

    real = ctrain._pairs
    ctrain._pairs = pairs
    try:
        fit = ctrain.fit_skips(None, [torch.tensor(j) for j in range(4)], L, False, [0, 1])
    finally:
        ctrain._pairs = real
    for i in range(L):
        assert float((fit[i] - W[i]).abs().max()) <= 0.02, i
    y = xs[0] @ W[0].T
    y[::32] = 1000.0
    assert int(ctrain.not_sinks(y).sum()) == 128 - 4
    x_all = torch.cat(xs)
    y_all = torch.cat([pairs(None, torch.tensor(j), L, False, [0])[0][1] for j in range(4)])
    with_sinks = ctrain._ridge_solve(x_all.T.double() @ x_all.double(), x_all.T.double() @ y_all.double())
    assert float((with_sinks - W[0]).abs().max()) > 1.0


def test_torchrun_splits_the_layers_across_ranks(tmp_path):
    """`torchrun --nproc_per_node 2 -m probescope circuit transcoders`: layers 0, 2 on rank 0 and 1, 3 on rank 1 (as
    sparsify splits modules), each rank reading only its own sites and checkpointing its own layers; the set equals a
    one-process run's (the same batches, seeds and optimiser per layer; 1e-5), and only rank 0 writes the metrics and
    the page."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port
    from probescope.core.io import load_tensors

    root = Path(__file__).resolve().parents[1]
    args = ["circuit", "transcoders", "--model", "tiny-llama", "--tokens", "2048", "--batch-size", "256",
            "--context-len", "32", "--k", "8", "--expansion", "2", "--eval-contexts", "8", "--checkpoint-every", "3",
            "--label-contexts", "0", "--threads", "1"]
    env = dict(os.environ, PROBESCOPE_QUIET="1", OMP_NUM_THREADS="1")

    def cli(out, launcher, extra=None):
        r = subprocess.run(launcher + args + ["--out", str(out)], capture_output=True, text=True, env={**env, **(extra or {})},
                           cwd=root, timeout=300)
        return r

    one = cli(tmp_path / "one", [sys.executable, "-m", "probescope"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = cli(tmp_path / "two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", free_port(), "-m", "probescope"])
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["world_size"] == 2 and m1["world_size"] == 1 and m2["steps"] == m1["steps"] == 8
    assert m2["fvu"] == pytest.approx(m1["fvu"], rel=1e-4, abs=1e-6)
    for i in range(4):
        a = load_tensors(tmp_path / "one" / f"layer_{i}" / "weights.safetensors")
        b = load_tensors(tmp_path / "two" / f"layer_{i}" / "weights.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert not (tmp_path / "two" / "checkpoint").exists() and (tmp_path / "two" / "report.html").exists()
