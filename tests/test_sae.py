"""Sparse autoencoders: kernels, architectures, shared pieces, formats, training, resume, DDP, eval, labels.

Tiny sizes and fixed seeds; tolerances are stated where they are used. Threads are pinned to 1 in this
module (small ops on a busy 2-core machine run far faster single-threaded) and restored afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
import torch

from probescope.sae import SAE, SAEConfig, TensorSource, TrainConfig, load_sae, save_sae, train_sae
from probescope.sae.core import geometric_median
from probescope.sae.kernels import dense_decode, dense_topk_encode, sparse_decode, topk_encode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["PROBESCOPE_QUIET"] = "1"
    yield
    torch.set_num_threads(old)


def synthetic(n: int, d: int = 16, n_feat: int = 64, active: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Sparse sums of unit features plus an offset: what an SAE should recover."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feat, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    mask = (torch.rand(n, n_feat, generator=g) < active / n_feat).float()
    return (mask * torch.rand(n, n_feat, generator=g) * 3) @ feats + 0.5


# --------------------------------------------------------------------------------------------------------
# Kernels: sparse = dense (tolerance 1e-5 absolute on values and grads, fp32)
# --------------------------------------------------------------------------------------------------------


def test_sparse_kernels_match_dense():
    torch.manual_seed(0)
    n, d, m, k = 64, 16, 96, 5
    x = torch.randn(n, d)
    w = torch.randn(m, d, requires_grad=True)
    b = torch.randn(m, requires_grad=True)
    wd = torch.randn(m, d, requires_grad=True)
    g_out = torch.randn(n, d)

    def run(enc, dec):
        for t in (w, b, wd):
            t.grad = None
        v, i = enc(x, w, b, k)
        y = dec(v, i, wd)
        (y * g_out).sum().backward()
        return y.detach(), w.grad.clone(), b.grad.clone(), wd.grad.clone()

    sparse = run(lambda *a: topk_encode(*a, fast=False), sparse_decode)
    dense = run(dense_topk_encode, dense_decode)
    for a, b_ in zip(sparse, dense):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5)


def test_sae_sparse_and_dense_paths_agree():
    x = synthetic(256)
    cfg = SAEConfig(d_in=16, k=4, expansion=4)
    grads = []
    for sparse in (True, False):
        sae = SAE(cfg, seed=3)
        sae.init_from_batch(x)
        sae.sparse_kernels = sparse
        out = sae(x)
        out.fvu.backward()
        grads.append((out.fvu.detach(), *(p.grad.clone() for p in sae.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_training_step_takes_its_device_from_the_input():
    """Device-agnostic hot loop, checked on CPU: with torch's default device set to "meta", any tensor the step
    made without `device=` would be a meta tensor and mixing it with the CPU inputs would fail. Every kernel path
    (dense / sparse, exact / bf16 selection), the AuxK term for dead latents and the optimizer step run, and
    give the same loss as with the default device left alone."""
    from probescope.sae.train import ScheduleFreeSignSGD

    x = synthetic(128)
    for sparse in (True, False):
        for fast in (False, True):
            sae = SAE(SAEConfig(d_in=16, k=4, expansion=4), seed=0)
            sae.init_from_batch(x)
            sae.sparse_kernels, sae.fast_select = sparse, fast
            dead = torch.zeros(64, dtype=torch.bool)
            dead[:8] = True
            ref = sae(x, dead_mask=dead, total_var=x.var(0).sum())
            opt = ScheduleFreeSignSGD(list(sae.parameters()), lr=1e-3)
            torch.set_default_device("meta")
            try:
                out = sae(x, dead_mask=dead, total_var=x.var(0).sum())
                (out.fvu + out.auxk_loss).backward()
                opt.step()
            finally:
                torch.set_default_device("cpu")
            assert out.fvu.device.type == "cpu" and all(p.device.type == "cpu" for p in sae.parameters())
            assert out.fvu.item() == pytest.approx(ref.fvu.item(), rel=1e-6)
            assert ref.auxk_loss.item() > 0 and out.auxk_loss.item() == pytest.approx(ref.auxk_loss.item(), rel=1e-6)


def test_fast_select_close_to_exact():
    # bf16 selection may swap near-ties; values are recomputed in fp32, so FVU agrees to 1e-2 relative
    x = synthetic(512, d=32)
    sae = SAE(SAEConfig(d_in=32, k=8, expansion=8), seed=0)
    sae.init_from_batch(x)
    exact = sae(x).fvu.item()
    sae.fast_select = True
    fast = sae(x).fvu.item()
    assert abs(fast - exact) / exact < 1e-2


# --------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------


def test_init_decoder_unit_norm_and_encoder_transpose():
    sae = SAE(SAEConfig(d_in=16, expansion=4), seed=1)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(sae.W_enc, 0.7 * sae.W_dec)  # [M, d] layout: W_enc = W_decᵀ x enc_init_scale
    one = SAE(SAEConfig(d_in=16, expansion=4, enc_init_scale=1.0), seed=1)
    torch.testing.assert_close(one.W_enc, one.W_dec)
    with pytest.raises(ValueError, match="enc_init_scale"):
        SAEConfig(d_in=16, enc_init_scale=0.0)


def test_parallel_gradient_removed():
    sae = SAE(SAEConfig(d_in=16, expansion=4), seed=1)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5


def test_geometric_median_is_robust():
    pts = torch.randn(200, 4) * 0.1
    pts[:10] += 100.0  # outliers drag the mean, not the median
    med = geometric_median(pts)
    assert med.norm() < 0.2 < pts.mean(0).norm()


def test_auxk_loss_uses_dead_latents_only():
    x = synthetic(128)
    sae = SAE(SAEConfig(d_in=16, k=4, expansion=4), seed=0)
    sae.init_from_batch(x)
    assert sae(x).auxk_loss.item() == 0.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:20] = True
    out = sae(x, dead_mask=dead)
    assert out.auxk_loss.item() > 0
    sae.zero_grad()
    out.auxk_loss.backward()
    assert sae.W_enc.grad[20:].abs().max() == 0 and sae.W_enc.grad[:20].abs().max() > 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_architectures_learn(arch):
    x = synthetic(8192, seed=1)
    held = synthetic(2048, seed=2)
    cfg = SAEConfig(d_in=16, arch=arch, k=4, expansion=4, normalize_input=True)
    sae = train_sae(TensorSource(x), cfg, TrainConfig(tokens=150_000, batch_size=256, lr=3e-3, log_every=1000))
    with torch.no_grad():
        before = SAE(cfg)
        before.init_from_batch(x)
        out, out0 = sae(held), before(held)
    # training lowers held-out FVU by at least 0.05 from the init (topk starts lowest: 0.55 -> 0.45 measured)
    assert out.fvu < out0.fvu - 0.05 and out.fvu < 0.6, (arch, out.fvu, out0.fvu)
    if arch == "topk":
        assert out.l0 <= 4
    assert out.l0 < 40  # sparse: far below the 64 latents


def test_fold_normalization_roundtrip(tmp_path):
    # a saved SAE takes raw activations: same reconstruction before and after folding (tol 1e-4 relative)
    x = synthetic(1024) * 37.0
    for arch in ("topk", "jumprelu", "batchtopk"):
        cfg = SAEConfig(d_in=16, arch=arch, k=4, expansion=4, normalize_input=True)
        sae = train_sae(TensorSource(x), cfg, TrainConfig(tokens=4096, batch_size=256, lr=3e-3))
        assert float(sae.in_scale) != 1.0
        sae.fast_select = False  # compare exact top-k on both sides
        with torch.no_grad():
            ref = sae(x).reconstruction
            save_sae(sae, tmp_path / arch)
            loaded = load_sae(tmp_path / arch)
            got = loaded(x).reconstruction
        assert float(loaded.in_scale) == 1.0
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------------------------------
# Formats: SAELens and sparsify folders (written by hand; by sparsify itself if installed)
# --------------------------------------------------------------------------------------------------------


def _write_saelens(folder: Path, d_in: int, d_sae: int, arch: str = "topk", hook: str = "blocks.2.hook_resid_post"):
    from probescope.core.io import atomic_write_json, save_tensors

    g = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_enc": torch.randn(d_sae, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g)
    save_tensors(folder / "sae_weights.safetensors", w)
    atomic_write_json(folder / "cfg.json", {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "k": 3,
                                             "hook_name": hook, "apply_b_dec_to_input": True,
                                             "normalize_activations": "none", "model_name": "tiny"})
    return w


def test_load_saelens_layout(tmp_path):
    x = torch.randn(32, 8)
    for arch in ("topk", "jumprelu", "standard"):
        w = _write_saelens(tmp_path / arch, 8, 24, arch)
        sae = load_sae(tmp_path / arch, d_in=8, hook="resid_post.2")
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        if arch == "topk":
            v, i = pre.topk(3, dim=-1)
            acts = torch.zeros_like(pre).scatter(1, i, v.relu())
        elif arch == "jumprelu":
            acts = pre.relu() * (pre > w["threshold"])
        else:
            acts = pre.relu()
        ref = acts @ w["W_dec"] + w["b_dec"]
        torch.testing.assert_close(sae(x).reconstruction, ref, atol=1e-4, rtol=1e-4)
    assert sae.cfg.hook_in == "resid_post.2"


def test_load_refuses_mismatch(tmp_path):
    _write_saelens(tmp_path / "s", 8, 24)
    with pytest.raises(ValueError, match="width 8.*width 16"):
        load_sae(tmp_path / "s", d_in=16)
    with pytest.raises(ValueError, match="resid_post.2, not resid_post.3"):
        load_sae(tmp_path / "s", hook="resid_post.3")
    with pytest.raises(ValueError, match="not an SAE folder"):
        (tmp_path / "empty").mkdir()
        load_sae(tmp_path / "empty")


def test_load_sparsify_layout(tmp_path):
    from probescope.core.io import atomic_write_json, save_tensors

    folder = tmp_path / "layers.3"
    g = torch.Generator().manual_seed(0)
    w = {"encoder.weight": torch.randn(40, 8, generator=g), "encoder.bias": torch.randn(40, generator=g),
         "W_dec": torch.randn(40, 8, generator=g), "b_dec": torch.randn(8, generator=g)}
    save_tensors(folder / "sae.safetensors", w)
    atomic_write_json(folder / "cfg.json", {"activation": "topk", "k": 4, "num_latents": 40, "d_in": 8,
                                            "transcode": False, "normalize_decoder": True})
    sae = load_sae(folder, d_in=8, hook="resid_post.3")
    x = torch.randn(16, 8)
    pre = (x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]
    v, i = pre.relu().topk(4, dim=-1)
    ref = torch.zeros_like(pre).scatter(1, i, v) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(sae(x).reconstruction, ref, atol=1e-4, rtol=1e-4)


def test_load_from_sparsify_itself(tmp_path):
    sp = pytest.importorskip("sparsify")
    coder = sp.SparseCoder(8, sp.SparseCoderConfig(num_latents=40, k=4))
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_()
    coder.save_to_disk(tmp_path / "layers.1")
    sae = load_sae(tmp_path / "layers.1", hook="resid_post.1")
    x = torch.randn(16, 8)
    with torch.no_grad():
        torch.testing.assert_close(sae(x).reconstruction, coder(x).sae_out, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------------
# Training through the CLI: model on the fly, resume after SIGKILL, DDP with 2 processes
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "texts.txt"
    words = "alpha beta gamma delta river stone cloud seven orange quiet window market".split()
    g = torch.Generator().manual_seed(0)
    paras = [" ".join(words[j] for j in torch.randint(0, len(words), (60,), generator=g).tolist()) for _ in range(60)]
    p.write_text("\n\n".join(paras))
    return p


def _cli(args, env=None, launcher=None):
    cmd = (launcher or [sys.executable, "-m", "probescope"]) + args
    e = dict(os.environ, PROBESCOPE_QUIET="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=ROOT, timeout=120)


TRAIN = ["sae", "train", "--model", "tiny-llama", "--layer", "1", "--k", "4", "--expansion", "4",
         "--tokens", "6144", "--batch-size", "256", "--context-len", "32", "--checkpoint-every", "5", "--quiet"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from probescope.core.io import load_tensors

    return load_tensors(folder / "weights.safetensors")


def test_resume_after_kill_matches_uninterrupted(tmp_path, text_file):
    base = TRAIN + ["--data", str(text_file)]
    r = _cli(base + ["--out", str(tmp_path / "full")])
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(base + ["--out", str(tmp_path / "killed")], env={"PROBESCOPE_SAE_KILL_AT_STEP": "13"})
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])  # SIGKILL after step 13, checkpoint at 10
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10 and not (tmp_path / "killed" / "weights.safetensors").exists()
    r = _cli(base + ["--out", str(tmp_path / "killed")])
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    for key in a:  # same data order, optimiser and counters: identical up to float round-off (1e-6)
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)


def test_ddp_two_processes_match_single(tmp_path, text_file):
    base = TRAIN + ["--data", str(text_file), "--checkpoint-every", "0"]
    r = _cli(base + ["--out", str(tmp_path / "single")])
    assert r.returncode == 0, r.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                "-m", "probescope"]
    r = _cli(base + ["--out", str(tmp_path / "ddp")], launcher=launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["world_size"] == 2
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    # same global batch, gradient all-reduced: equal up to reduction order; 24 Adam steps → 1e-4 absolute
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


# --------------------------------------------------------------------------------------------------------
# Transcoders, evaluation and labels on the tiny model (in process)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from probescope import load_model

    return load_model("tiny-llama")


def test_transcoder_and_eval(tiny, text_file):
    from probescope.core.data import read_texts
    from probescope.sae import ModelSource, evaluate_sae, sae_config_for
    from probescope.core.store import make_contexts

    model, tok = tiny
    texts = read_texts(text_file)
    src = ModelSource(model, tok, texts, "mlp_in.1", "mlp_out.1", context_len=32)
    cfg = sae_config_for(src, None, k=8, expansion=4, normalize_input=True)  # the tiny MLP's outputs are ~1e-3
    assert cfg.transcoder
    sae = train_sae(src, cfg, TrainConfig(tokens=4096, batch_size=256))
    ids = make_contexts(tok, texts, 32, max_contexts=4)
    res = evaluate_sae(sae, src, model=model, input_ids=ids, tokens=1024, batch_size=256)
    assert 0 <= res["dead_frac"] <= 1 and res["fvu"] < 1.0
    assert res["loss_recovered"] == pytest.approx(res["loss_recovered"])  # finite
    assert res["kl"] >= 0


def test_sae_jobs_check_their_options_and_take_a_loaded_model(tiny, text_file, tmp_path):
    """The job configs refuse what the CLI refuses, when made in Python (declared rules first, the cross-field ones
    in code); the run functions take the model object instead of loading one, and write the same files."""
    from probescope.sae.run import (SaeEvalConfig, SaeLatentsConfig, SaeTrainConfig, run_sae_eval, run_sae_latents,
                                    run_sae_train)

    with pytest.raises(ValueError, match=r"--optimizer 'sgd' is not one of sf-signum, signum, adam"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"--lr -1 is out of range: it must be ≥ 0"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match=r"tokens=100 is less than one batch of 256"):
        TrainConfig(tokens=100, batch_size=256)
    with pytest.raises(ValueError, match=r"tokens='512' is a str, not an int"):
        TrainConfig(tokens="512")  # a config read from JSON by hand: the type is named
    with pytest.raises(ValueError, match=r"--k 0 is out of range: it must be ≥ 1"):
        SaeTrainConfig(k=0)
    with pytest.raises(ValueError, match=r"--sae '' is empty: pass --sae FOLDER"):
        SaeEvalConfig()
    model, tok = tiny
    with pytest.raises(ValueError, match="pass either --store or --model, not both"):
        run_sae_train(SaeTrainConfig(store=str(tmp_path / "store"), layer=1), model, tok)
    out = tmp_path / "sae"
    m = run_sae_train(SaeTrainConfig(data=str(text_file), layer=1, k=4, expansion=4, context_len=32, out=str(out),
                                     train=TrainConfig(tokens=2048, batch_size=256), quiet=True), model, tok)
    assert m["final"]["fvu"] < 1.5 and (out / "weights.safetensors").exists()
    ev = run_sae_eval(SaeEvalConfig(sae=str(out), data=str(text_file), contexts=2, context_len=32, tokens=512), model, tok)
    assert {"fvu", "l0", "loss_recovered"} <= set(ev) and (out / "eval.json").exists()
    lat = run_sae_latents(SaeLatentsConfig(sae=str(out), data=str(text_file), contexts=2, context_len=32), model, tok)
    assert lat["n_latents"] == load_sae(out).n_latents and (out / "latents.json").exists()


def test_sae_eval_and_latent_labels(tiny, text_file, tmp_path):
    from probescope.core.data import read_texts
    from probescope.sae import ModelSource, evaluate_sae, explain, latent_stats, sae_config_for
    from probescope.sae.latents import save_latent_stats
    from probescope.core.store import make_contexts

    model, tok = tiny
    texts = read_texts(text_file)
    src = ModelSource(model, tok, texts, 2, context_len=32)
    sae = train_sae(src, sae_config_for(src, None, k=4, expansion=4), TrainConfig(tokens=8192, batch_size=256))
    ids = make_contexts(tok, texts, 32, max_contexts=4)
    res = evaluate_sae(sae, src, model=model, input_ids=ids, tokens=2048, batch_size=256)
    assert res["loss_orig"] <= res["loss_zero"] + 1.0 and res["l0"] <= 4
    stats = latent_stats(sae, model, tok, ids, top_n=4)
    save_latent_stats(stats, tmp_path)
    alive = [j for j, r in stats["latents"].items() if r["top_contexts"]]
    assert alive and 0 < stats["latents"][alive[0]]["frequency"] <= 1
    label = explain(int(alive[0]), tmp_path)
    assert isinstance(label, str) and label and label != "dead (never fired)"


def test_sae_cli_train_eval_latents_json_and_page(tmp_path, text_file):
    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    out = str(tmp_path / "sae")
    res = r.invoke(app, TRAIN[:-1] + ["--data", str(text_file), "--out", out, "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["run_dir"] == out and 0 < m["final"]["fvu"] < 1.5
    res = r.invoke(app, ["sae", "eval", "--sae", out, "--data", str(text_file), "--contexts", "4", "--context-len", "32",
                         "--tokens", "1024", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"fvu", "l0", "dead_frac", "loss_recovered", "kl"} <= set(ev)
    res = r.invoke(app, ["sae", "latents", "--sae", out, "--data", str(text_file), "--contexts", "4",
                         "--context-len", "32", "--json"])
    assert res.exit_code == 0, res.output
    lat = json.loads(res.stdout.strip().splitlines()[-1])
    assert lat["n_fired"] > 0 and len(lat["labels"]) == lat["n_latents"]
    j, label = next(iter(lat["labels"].items()))
    assert load_sae(out).explain(int(j)) == label  # labels travel with the folder (sparse probes show them)
    assert load_sae(out).explain(10**6) == "latent 1000000"
    page = (tmp_path / "sae" / "report.html").read_text()
    assert "SAE training: fvu" in page and "SAE latents: top contexts" in page and "Evaluation" in page


def test_schedule_free_sign_sgd_matches_reference_and_averages():
    """y = βx + (1-β)z; z moves by -lr·sign(g) at y; x is the lr²-weighted average of z (reference loop)."""
    from probescope.sae.train import ScheduleFreeSignSGD

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    target = torch.randn(5)
    opt = ScheduleFreeSignSGD([w], lr=0.1, momentum=0.9)
    z, x, ws = w.detach().clone(), w.detach().clone(), 0.0
    lrs = [0.05, 0.1, 0.1, 0.1, 0.02]
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        y = 0.9 * x + 0.1 * z
        torch.testing.assert_close(w.detach(), y, atol=1e-6, rtol=0)
        loss = ((w - target) ** 2).sum()
        loss.backward()
        g = 2 * (y - target)
        opt.step()
        opt.zero_grad()
        z = z - lr * g.sign()
        ws += lr * lr
        x = x + (lr * lr / ws) * (z - x)
    opt.average_()
    torch.testing.assert_close(w.detach(), x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="momentum"):
        ScheduleFreeSignSGD([w], momentum=1.0)


def test_every_kernel_path_selects_the_same_latents():
    """dense, sparse fp32 and sparse + bf16 select on one fixed input: the same top-k sets
    (sparse = dense exactly; bf16 selection may swap near-ties: measured 96% of rows identical on this random
    input, asserted ≥ 0.95, and every swap a near-tie), values identical where the sets agree (1e-5), and the one-line
    path report."""
    from probescope.sae.kernels import kernel_path

    torch.manual_seed(0)
    x = synthetic(512, d=32)
    w, b = torch.randn(256, 32) * 0.3, torch.zeros(256)
    dv, di = dense_topk_encode(x, w, b, 8)
    sv, si = topk_encode(x, w, b, 8, fast=False)
    fv, fi = topk_encode(x, w, b, 8, fast=True)
    rows = lambda i: [frozenset(r) for r in i.tolist()]  # noqa: E731
    assert rows(di) == rows(si)
    same = [a == c for a, c in zip(rows(di), rows(fi))]
    assert sum(same) / len(same) >= 0.95
    for r in [i for i, ok in enumerate(same) if ok][:50]:
        a = dict(zip(di[r].tolist(), dv[r].tolist()))
        c = dict(zip(fi[r].tolist(), fv[r].tolist()))
        assert all(abs(a[j] - c[j]) <= 1e-5 for j in a)
    # a latent the bf16 selection swaps in is a near-tie: its exact pre-activation is within bf16 rounding
    # (2⁻⁷ of the row's largest |pre-activation|) of the exact k-th value
    pre = x @ w.T + b
    kth, tol = pre.topk(8, 1).values[:, -1], pre.abs().amax(1) * 2 ** -7
    for r in [i for i, ok in enumerate(same) if not ok]:
        for j in set(fi[r].tolist()) - set(di[r].tolist()):
            assert kth[r] - pre[r, j] <= tol[r], (r, j, float(kth[r] - pre[r, j]), float(tol[r]))
    cpu = torch.device("cpu")
    assert kernel_path(False, "auto", cpu)[0] == "dense fp32"
    assert kernel_path(True, "on", cpu) == ("sparse + bf16 top-k select", "--fast-select on")
    path, why = kernel_path(True, "auto", cpu)
    assert path in ("sparse fp32", "sparse + bf16 top-k select") and why
