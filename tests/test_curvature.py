"""K-FAC curvature edits on tiny models: factors against the exact Fisher/GGN, edits, baselines, bad input, CLI."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from probescope.curvature import (METHODS, Edit, FactorConfig, KFACFactors, collect_factors, curvature_mask,
                                  make_edit, mlp_matrices, resolve_target, svd_rank_for)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyLinear(nn.Module):
    """Frozen one-hot-ish embedding → one linear layer → logits: per-token losses only touch their own output."""

    def __init__(self, vocab: int = 8, d: int = 5, seed: int = 0, zero: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, vocab, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, d, generator=g))
            self.proj.weight.copy_(torch.zeros(vocab, d) if zero else 0.5 * torch.randn(vocab, d, generator=g))

    def forward(self, input_ids, use_cache=False, **kw):
        return SimpleNamespace(logits=self.proj(self.embed(input_ids)))


def _exact_fisher(model: TinyLinear, windows: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_t vec(∇_W ℓ_t) vec(∇_W ℓ_t)ᵀ over every position with a next token (row-major vec), float64."""
    W = model.proj.weight.detach().double()
    a = model.embed(windows[:, :-1]).detach().double().reshape(-1, W.shape[1])
    y = windows[:, 1:].reshape(-1)
    p = torch.softmax(a @ W.T, -1)
    g = p - torch.nn.functional.one_hot(y, W.shape[0]).double()  # ∂ℓ_t/∂logits_t
    grads = torch.einsum("ni,nj->nij", g, a).reshape(a.shape[0], -1)
    return grads.T @ grads / a.shape[0]


def _exact_ggn(model: TinyLinear, windows: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_t (diag p_t − p_t p_tᵀ) ⊗ a_t a_tᵀ: the GGN = the true Fisher of softmax cross-entropy."""
    W = model.proj.weight.detach().double()
    a = model.embed(windows[:, :-1]).detach().double().reshape(-1, W.shape[1])
    p = torch.softmax(a @ W.T, -1)
    H = torch.diag_embed(p) - torch.einsum("ni,nj->nij", p, p)
    return torch.einsum("nij,nkl->ikjl", H, torch.einsum("ni,nj->nij", a, a)).reshape(
        W.numel(), W.numel()) / a.shape[0]


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def test_factors_equal_exact_empirical_fisher_where_kronecker_is_exact():
    """One input token repeated (a constant): the empirical Fisher IS A ⊗ G; tolerance 1e-5 (relative Frobenius)."""
    model = TinyLinear()
    g = torch.Generator().manual_seed(1)
    windows = torch.cat([torch.full((40, 1), 3), torch.randint(0, 8, (40, 1), generator=g)], 1)  # [3, y] pairs
    windows = torch.cat([windows, windows[:, :1]], 1)[:, :2]
    f = collect_factors(model, None, windows=windows, matrices=["proj"],
                        config=FactorConfig(batch_size=7, min_token_ratio=1), quiet=True)
    assert f.n_tokens == 40 and f.targets[0]["site"] == "" and f.targets[0]["path"] == "proj"
    exact = _exact_fisher(model, windows)
    assert _rel(torch.kron(f.G("proj"), f.A("proj")), exact) < 1e-5
    # with varying inputs the same comparison is only approximate: the test can tell the two apart
    wv = torch.randint(0, 8, (60, 2), generator=g)
    fv = collect_factors(model, None, windows=wv, matrices=["proj"], config=FactorConfig(min_token_ratio=1), quiet=True)
    assert _rel(torch.kron(fv.G("proj"), fv.A("proj")), _exact_fisher(model, wv)) > 1e-2


def test_true_fisher_factors_converge_to_exact_ggn():
    """W = 0: p is the same for every input, so the GGN is exactly A ⊗ H; sampled labels estimate H.
    20,000 tokens: relative error < 0.05 (Monte Carlo, ~1/√N); the empirical Fisher on the data's own labels
    differs from it (labels here are not drawn from the model)."""
    model = TinyLinear(zero=True)
    g = torch.Generator().manual_seed(2)
    windows = torch.randint(0, 8, (2000, 11), generator=g)
    windows[:, 1:] = torch.where(torch.rand(2000, 10, generator=g) < 0.7, 5, windows[:, 1:])  # skewed labels
    exact = _exact_ggn(model, windows)
    cfg = FactorConfig(fisher="true", batch_size=256, seed=0, min_token_ratio=1)
    ft = collect_factors(model, None, windows=windows, matrices=["proj"], config=cfg, quiet=True)
    assert ft.n_tokens == 20000
    assert _rel(torch.kron(ft.G("proj"), ft.A("proj")), exact) < 0.05
    fe = collect_factors(model, None, windows=windows, matrices=["proj"],
                         config=FactorConfig(batch_size=256, min_token_ratio=1), quiet=True)
    assert _rel(torch.kron(fe.G("proj"), fe.A("proj")), exact) > 0.2


@pytest.fixture(scope="module")
def llama():
    from probescope import load_model
    from probescope.core.data import default_corpus  # cached once per process (the CLI test reuses it)

    model, tok = load_model("tiny-llama")
    return model, tok, list(default_corpus())[:60]


@pytest.fixture(scope="module")
def llama_factors(llama):
    model, tok, texts = llama
    torch.set_num_threads(1)
    return collect_factors(model, tok, texts, mlp_matrices(model, "1-2"),
                           FactorConfig(context_len=64, max_tokens=2000), quiet=True)


def test_factor_records_and_model_untouched(llama, llama_factors):
    model, tok, texts = llama
    f = llama_factors
    assert f.names == ["mlp.1.up_proj", "mlp.1.gate_proj", "mlp.1.down_proj", "mlp.2.up_proj", "mlp.2.gate_proj",
                       "mlp.2.down_proj"]
    assert [t["site"] for t in f.targets] == ["mlp_in.1", "mlp_in.1", "mlp_out.1", "mlp_in.2", "mlp_in.2", "mlp_out.2"]
    assert f.A("mlp.1.down_proj").shape == (128, 128) and f.G("mlp.1.down_proj").shape == (64, 64)
    # up and gate read the same input: the same A (to round-off)
    assert torch.allclose(f.A("mlp.1.up_proj"), f.A("mlp.1.gate_proj"), rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    e = f.eigen("mlp.1.down_proj")
    assert torch.all(e.lam_a[:-1] >= e.lam_a[1:]) and float(e.lam_g.min()) >= 0
    s = f.summary()["mlp.1.down_proj"]
    assert 0 < s["share_components_for_99pct"] <= 1


def test_resume_after_a_crash_equals_one_run(llama, tmp_path):
    """Running sums saved every 2 batches; a crash in batch 5 and a resume give the one-run sums (1e-9)."""
    model, tok, texts = llama
    mats = ["mlp.1.down"]
    cfg = FactorConfig(context_len=32, batch_size=4, max_tokens=1200, save_every=2)
    whole = collect_factors(model, tok, texts, mats, cfg, quiet=True)
    calls = {"n": 0}

    def boom(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")

    h = model.register_forward_pre_hook(boom, with_kwargs=True)
    with pytest.raises(RuntimeError, match="killed"):
        collect_factors(model, tok, texts, mats, cfg, out_dir=tmp_path / "f", quiet=True)
    h.remove()
    part = KFACFactors.load(tmp_path / "f")
    assert part.n_batches == 4
    done = collect_factors(model, tok, texts, mats, cfg, out_dir=tmp_path / "f", quiet=True)
    assert done.n_tokens == whole.n_tokens and done.n_batches == whole.n_batches
    for n in done.names:
        assert torch.allclose(done.a_sum[n], whole.a_sum[n], rtol=1e-9, atol=1e-9)
        assert torch.allclose(done.g_sum[n], whole.g_sum[n], rtol=1e-9, atol=1e-12)
    again = KFACFactors.load(tmp_path / "f")
    assert again.n_tokens == whole.n_tokens


def test_mask_keeps_the_share_of_mass(llama_factors):
    e = llama_factors.eigen("mlp.2.up_proj")
    prod = torch.outer(e.lam_g, e.lam_a)
    for rho in (0.3, 0.8, 0.99):
        m = curvature_mask(e, keep=rho)
        kept = float(prod[m].sum() / prod.sum())
        assert kept >= rho - 1e-9
        smallest = float(prod[m].min())
        assert kept - smallest / float(prod.sum()) < rho + 1e-9  # minimal: dropping the weakest kept falls below ρ
        assert float(prod[~m].max()) <= smallest  # the kept ones are the largest
    assert int(curvature_mask(e, top_k=17).sum()) == 17


def test_edit_keep_one_is_identity_and_restore_is_bitwise(llama, llama_factors):
    model, tok, _ = llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ed = make_edit(model, llama_factors, "kfac", keep=1.0)
    for n, d in ed.delta.items():
        assert float(d.abs().max()) < 1e-5, n
    ed = make_edit(model, llama_factors, "kfac", keep=0.5)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # planning touches nothing
    with ed.applied_to(model):
        w = resolve_target(model, "mlp.1.down").weight
        assert not torch.equal(w, before["model.layers.1.mlp.down_proj.weight"])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_edit_is_all_or_nothing(llama, llama_factors, monkeypatch):
    from probescope.curvature import targets as T

    model, tok, _ = llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ed = make_edit(model, llama_factors, "kfac", keep=0.5)
    real = T.Target.set_weight
    calls = {"n": 0}

    def flaky(self, new):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk on fire")
        real(self, new)

    monkeypatch.setattr(T.Target, "set_weight", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ed.apply(model)
    monkeypatch.setattr(T.Target, "set_weight", real)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not ed.applied


def test_saved_delta_round_trip(llama, llama_factors, tmp_path):
    model, tok, _ = llama
    w0 = resolve_target(model, "mlp.2.down").weight.detach().clone()
    ed = make_edit(model, llama_factors, "kfac", keep=0.7)
    ed.save(tmp_path / "e")
    import json

    rec = json.loads((tmp_path / "e" / "edit.json").read_text())
    assert rec["sites"][2] == "mlp_out.1" and rec["targets"][2]["path"] == "model.layers.1.mlp.down_proj"
    back = Edit.load(tmp_path / "e")
    back.apply(model)
    w1 = resolve_target(model, "mlp.2.down").weight.detach().clone()
    assert torch.allclose(w1, w0 + ed.delta["mlp.2.down_proj"], atol=1e-6)
    back.restore(model)
    assert torch.equal(resolve_target(model, "mlp.2.down").weight, w0)
    # reversible from the file alone too: apply Δ then −Δ (float32 round-off, 1e-6)
    back.apply(model)
    back._saved = None
    Edit.load(tmp_path / "e").apply(model, scale=-1.0)
    assert torch.allclose(resolve_target(model, "mlp.2.down").weight, w0, atol=1e-6)
    resolve_target(model, "mlp.2.down").set_weight(w0)


def test_baselines_remove_as_many_parameters(llama, llama_factors):
    model, tok, _ = llama
    ref = make_edit(model, llama_factors, "kfac", keep=0.6).config["per_matrix"]
    for method in METHODS:
        ed = make_edit(model, llama_factors, method, keep=0.6, seed=3)
        for name, info in ed.config["per_matrix"].items():
            assert info["n_keep"] == ref[name]["n_keep"]
            w = resolve_target(model, name).weight.detach()
            new = w + ed.delta[name]
            if method == "magnitude":
                assert int((new.abs() > 1e-7).sum()) <= info["n_keep"]
            if method == "svd":
                assert torch.linalg.matrix_rank(new.double(), atol=1e-4) == info["rank"]
    assert svd_rank_for(0, 64, 128) == 0 and svd_rank_for(64 * 128, 64, 128) == 64
    assert svd_rank_for(10 * (64 + 128 - 10), 64, 128) == 10


def test_gpt2_conv1d_and_gemma_targets():
    from probescope import load_model
    from probescope.core.data import default_corpus

    for name, expect in (("tiny-gpt2", ["mlp.0.c_fc", "mlp.0.c_proj"]),
                         ("tiny-gemma3", ["mlp.0.up_proj", "mlp.0.gate_proj", "mlp.0.down_proj"])):
        model, tok = load_model(name)
        mats = mlp_matrices(model, [0])
        assert mats == expect
        f = collect_factors(model, tok, list(default_corpus())[:30], mats, FactorConfig(context_len=64, max_tokens=1200),
                            quiet=True)
        t = resolve_target(model, mats[0])
        assert f.record(mats[0])["shape"] == list(t.shape)
        w0 = t.weight.detach().clone()
        with make_edit(model, f, "kfac", keep=0.9).applied_to(model):
            assert not torch.equal(t.weight, w0)
        assert torch.equal(t.weight, w0)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input(llama, llama_factors):
    from probescope import load_model

    model, tok, texts = llama
    with pytest.raises(TypeError, match="not a linear layer"):
        resolve_target(model, "model.layers.0.mlp.act_fn")
    with pytest.raises(TypeError, match="not a linear layer"):
        resolve_target(model, "model.norm")
    with pytest.raises(ValueError, match="not understood"):
        resolve_target(model, "mlp.x.up")
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(model, "mlp.9.up")
    with pytest.raises(ValueError, match="no 'fc9'"):
        resolve_target(model, "mlp.1.fc9")
    for bad in (0.0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            make_edit(model, llama_factors, "kfac", keep=bad)
    with pytest.raises(ValueError, match="one of"):
        make_edit(model, llama_factors, "kfac", keep=0.5, top_k=3)
    with pytest.raises(ValueError, match="method"):
        make_edit(model, llama_factors, "prune", keep=0.5)
    with pytest.raises(ValueError, match=r"needs at least 512"):
        collect_factors(model, tok, texts[:1], ["mlp.1.down"], FactorConfig(context_len=32, max_tokens=100))
    with pytest.raises(ValueError, match="fisher"):
        collect_factors(model, tok, texts, ["mlp.1.down"], FactorConfig(fisher="exact"))
    gpt2, _ = load_model("tiny-gpt2")
    gem, _ = load_model("tiny-gemma3")
    with pytest.raises(ValueError, match=r"tiny-llama.*tiny-gemma3|tiny-gemma3.*tiny-llama"):
        make_edit(gem, llama_factors, "kfac", keep=0.5)  # same widths, another model: both named
    f = KFACFactors([{**llama_factors.targets[0], "name": "model.layers.1.mlp.up_proj", "site": "",
                      "path": "transformer.h.1.mlp.c_fc"}],
                    {"model.layers.1.mlp.up_proj": llama_factors.a_sum["mlp.1.up_proj"]},
                    {"model.layers.1.mlp.up_proj": llama_factors.g_sum["mlp.1.up_proj"]}, 10, 1, "tiny-llama")
    with pytest.raises(ValueError, match=r"\(128, 64\).*\(256, 64\)"):
        make_edit(gpt2, f, "kfac", keep=0.5)
    broken = KFACFactors(llama_factors.targets, dict(llama_factors.a_sum), dict(llama_factors.g_sum),
                         llama_factors.n_tokens, 1, llama_factors.model)
    broken.a_sum["mlp.1.up_proj"] = broken.a_sum["mlp.1.up_proj"].clone()
    broken.a_sum["mlp.1.up_proj"][0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="non-finite"):
        make_edit(model, broken, "kfac", keep=0.5)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.raises(FileNotFoundError):
        KFACFactors.load("/nonexistent/factors")


# ------------------------------------------------------------------------------------------------ organism + CLI
def test_tail_forward_equals_full_and_canaries_are_distinct(llama):
    from probescope.curvature.organism import canaries, check_tail

    model, tok, _ = llama
    ids = torch.randint(0, 250, (3, 20), generator=torch.Generator().manual_seed(0))
    assert check_tail(model, ids, 2) < 1e-5
    cs = canaries(tok, 16, 6, 10, seed=0)
    assert len({tuple(c[:6]) for c in cs}) == 16 and all(len(c) == 16 for c in cs)
    assert cs == canaries(tok, 16, 6, 10, seed=0)


def test_configs_check_on_construction_and_runs_take_a_model(llama, tmp_path, monkeypatch):
    """The command dataclasses refuse what the CLI refuses when made in Python (declared rules; the layer spec, the
    keep-or-top-k and the method labels in code); the organism's saved settings keep their keys; run_fit and
    run_edit use the model object given instead of loading one."""
    import json

    from probescope.curvature.config import EditConfig, EvalConfig, FitConfig, OrganismConfig
    from probescope.curvature.runner import run_edit, run_fit

    with pytest.raises(ValueError, match=r"--keep 1.5 is out of range: it must be > 0 and ≤ 1"):
        EditConfig(keep=1.5)
    with pytest.raises(ValueError, match=r"--keep and --top-k are both unset"):
        EditConfig(keep=None)
    EditConfig(keep=None, top_k=3)
    with pytest.raises(ValueError, match=r"--method 'prune' is not one of kfac, random, magnitude, svd"):
        EditConfig(method="prune")
    with pytest.raises(ValueError, match=r"--fisher 'exact' is not one of empirical, true"):
        FitConfig(fisher="exact")
    with pytest.raises(ValueError, match=r"--context-len 1 is out of range: it must be ≥ 2"):
        FitConfig(context_len=1)
    with pytest.raises(ValueError, match=r"layers 'x': write a range"):
        OrganismConfig(layers="x")
    with pytest.raises(ValueError, match=r"--steps 0 is out of range"):
        OrganismConfig(steps=0)
    with pytest.raises(ValueError, match=r"--methods: 'prune' is not one of kfac, random, magnitude, svd"):
        EvalConfig(methods=["kfac", "prune"])
    with pytest.raises(ValueError, match=r"--keeps 0.9,0 \(the value 0\) is out of range"):
        EvalConfig(keeps=[0.9, 0])
    assert EvalConfig(methods=["kfac:true"]).methods == ["kfac:true"]  # the 2nd factors' label
    assert set(OrganismConfig().settings()) == {
        "model", "n_canaries", "prefix_tokens", "suffix_tokens", "layers", "matrices", "n_skill_train", "n_skill_test",
        "skill_per_step", "steps", "lr", "seed", "threads"}  # config.json and organism.json's "config" as before
    model, tok, texts = llama
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    import probescope.core.models.registry as registry

    def no_load(*a, **kw):
        raise AssertionError("loaded a model although one was given")

    monkeypatch.setattr(registry, "load_model", no_load)
    fit = run_fit(FitConfig(model="tiny-llama", data=str(data), layers="1", max_tokens=1000, context_len=64,
                            out=str(tmp_path / "fit")), model, tok, quiet=True)
    assert fit["n_tokens"] >= 1000 and fit["sites"] == ["mlp_in.1", "mlp_in.1", "mlp_out.1"]
    saved = json.loads((tmp_path / "fit" / "config.json").read_text())
    assert saved["model"] == "tiny-llama" and saved["threads"] == 1 and "quiet" not in saved
    ed = run_edit(EditConfig(model="tiny-llama", factors=fit["factors"], keep=0.5, out=str(tmp_path / "edit")),
                  model, tok, quiet=True)
    assert 0 < ed["kept_share_params"] < 1 and (tmp_path / "edit" / "edit" / "delta.safetensors").exists()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # planned and saved, not applied


def test_cli_organism_fit_edit_eval(tmp_path):
    import json

    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    org, fit, fit2, ed, ev = (str(tmp_path / x) for x in ("org", "fit", "fit2", "edit", "eval"))
    res = r.invoke(app, ["curvature", "organism", "--model", "tiny-llama", "--n-canaries", "8", "--prefix-tokens", "6",
                         "--suffix-tokens", "8", "--layers", "2-3", "--steps", "3", "--out", org, "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert 0 <= m["organism"]["recall"] <= 1 and (tmp_path / "org" / "report.html").exists()
    # 3 steps memorize nothing (#36): the organism says so, and fit / eval stop with the fix unless told to go on
    assert m["organism"]["recall"] < 0.5 and "did not memorize" in m["warning"]
    for cmd in (["fit", "--layers", "2-3"], ["eval", "--factors", "x"]):
        res = r.invoke(app, ["curvature", *cmd, "--organism", org, "--out", str(tmp_path / "refused")])
        assert res.exit_code == 2 and "did not memorize" in res.output and "--steps" in res.output, res.output
        assert not (tmp_path / "refused").exists()
    for out, fisher in ((fit, "empirical"), (fit2, "true")):
        res = r.invoke(app, ["curvature", "fit", "--organism", org, "--layers", "2-3", "--max-tokens", "1500",
                             "--context-len", "64", "--fisher", fisher, "--out", out, "--json", "--allow-unmemorized"])
        assert res.exit_code == 0, res.output
        m = json.loads(res.stdout)
        assert m["n_tokens"] >= 1500 and m["sites"][:3] == ["mlp_in.2", "mlp_in.2", "mlp_out.2"]
    assert "eigenvalues of A and G" in (tmp_path / "fit" / "report.html").read_text()
    res = r.invoke(app, ["curvature", "edit", "--organism", org, "--factors", fit + "/factors", "--keep", "0.7",
                         "--out", ed, "--quiet"])
    assert res.exit_code == 0 and res.output == "", res.output
    assert (tmp_path / "edit" / "edit" / "delta.safetensors").exists()
    res = r.invoke(app, ["curvature", "eval", "--organism", org, "--factors", fit + "/factors", "--factors",
                         fit2 + "/factors", "--keeps", "0.9,0.5", "--methods", "kfac,kfac:true,random,magnitude,svd",
                         "--text-windows", "4", "--out", ev, "--json", "--allow-unmemorized"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert len(m["rows"]) == 10 and {"recall_ci", "ppl_ci", "skill_ci"} <= set(m["rows"][0])
    assert "Edit sweep" in (tmp_path / "eval" / "report.html").read_text()
    # bad input: one red line, exit 2
    res = r.invoke(app, ["curvature", "edit", "--organism", org, "--factors", fit + "/factors", "--keep", "1.5",
                         "--out", ed])
    assert res.exit_code == 2 and "(0, 1]" in res.output
    res = r.invoke(app, ["curvature", "edit", "--model", "tiny-gpt2", "--factors", fit + "/factors", "--out", ed])
    assert res.exit_code == 2 and "tiny-gpt2" in res.output
    # a run folder with other settings is refused, --overwrite replaces it (its old running sums dropped)
    args = ["curvature", "fit", "--organism", org, "--layers", "3", "--max-tokens", "1000", "--context-len", "64",
            "--out", fit, "--quiet", "--allow-unmemorized"]
    res = r.invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = r.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert KFACFactors.load(tmp_path / "fit" / "factors").names == ["mlp.3.up_proj", "mlp.3.gate_proj", "mlp.3.down_proj"]
