"""ConceptLens attribution against autograd and finite differences; learning filters on the gradient."""

import pytest
import torch

import probescope as ps
from probescope.finetune.concepts import STEER_GRID, ConceptCallback, ConceptLens, LearningFilter, filter_spec, load_timeline, pca_directions, parse_filter, sae_directions
from probescope.core.hooks import orthonormal, read_into, residual_hooks
from probescope.sae import SAE, SAEConfig

LAYER = 2


@pytest.fixture()
def setup(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    sae = SAE(SAEConfig(d_in=64, arch="topk", expansion=4, k=8), seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # some latents fire on random activations
    ids = tok(["the cat sat on the mat", "two plus two is four"], return_tensors="pt", padding=True)
    return model, sae, ids


def _loss(model, ids):
    out = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], labels=ids["input_ids"])
    return out.loss


def test_attribution_matches_autograd_and_finite_differences(setup):
    model, sae, ids = setup
    lens = ConceptLens(model, sae, LAYER)
    model.zero_grad()
    with lens.attach():
        _loss(model, ids).backward()
    lens.step()
    eff = lens.timeline.effects[0].double()

    # autograd reference: ∂L/∂x at the layer, then Σ_tokens (g · d_f) a_f, all dense in float64
    xs = []
    with residual_hooks(model, {LAYER: lambda h: (h.retain_grad(), xs.append(h))[-1] and None}):
        _loss(model, ids).backward()
    x, g = xs[0].detach(), xs[0].grad
    a = sae.encode(x).dense().double()
    ref = ((g.reshape(-1, 64).double() @ sae.W_dec.double().T) * a).sum(0)
    assert torch.allclose(eff, ref, rtol=1e-4, atol=1e-6)

    # finite differences: scale latent f's contribution a_f·d_f at every token by (1 + ε)
    f = int(eff.abs().argmax())
    d_f = sae.W_dec[f].detach()

    def loss_with(eps: float) -> float:
        def add(h):
            af = sae.encode(h.detach()).dense()[:, f].reshape(h.shape[:-1]).unsqueeze(-1)
            return h + eps * af * d_f
        with torch.no_grad(), residual_hooks(model, {LAYER: add}):
            return float(_loss(model, ids).double())

    eps = 1e-3
    fd = (loss_with(eps) - loss_with(-eps)) / (2 * eps)
    assert abs(fd - float(eff[f])) <= 2e-3 * max(1.0, abs(fd)), (fd, float(eff[f]))


def _grad_at_layer(model, ids, filt=None):
    grads = []

    def capture(h):
        if h.requires_grad:
            h.register_hook(lambda g: grads.append(g.detach().clone()))

    edits = [filt.edit(model), capture] if filt is not None else [capture]
    with residual_hooks(model, {LAYER: edits}):
        _loss(model, ids).backward()
    model.zero_grad()
    return grads[0].reshape(-1, 64)


def test_suppress_zeroes_the_gradient_along_directions(setup):
    model, sae, ids = setup
    dirs = sae_directions(sae, [0, 3, 5])
    q = orthonormal(dirs)
    g0 = _grad_at_layer(model, ids)
    g1 = _grad_at_layer(model, ids, LearningFilter(dirs, "suppress", layer=LAYER))
    assert (g1 @ q.T).abs().max() <= 1e-6
    assert torch.allclose(g0 - (g0 @ q.T) @ q, g1, atol=1e-6)  # the orthogonal part is untouched
    g2 = _grad_at_layer(model, ids, LearningFilter(dirs, "amplify", layer=LAYER, alpha=3.0))
    assert torch.allclose(g2 @ q.T, 3 * (g0 @ q.T), atol=1e-6)


def test_ablate_and_steer_edit_the_forward(setup):
    model, sae, ids = setup
    dirs = sae_directions(sae, [1, 2])
    q = orthonormal(dirs)
    seen = []
    with LearningFilter(dirs, "ablate", layer=LAYER).attach(model), residual_hooks(model, {LAYER: read_into(seen)}):
        model(**ids)
    assert (seen[0] @ q.T).abs().max() <= 1e-5
    base, steered = [], []
    with residual_hooks(model, {LAYER: read_into(base)}):
        model(**ids)
    with LearningFilter(dirs[:1], "steer", layer=LAYER, coef=2.0).attach(model), residual_hooks(model, {LAYER: read_into(steered)}):
        model(**ids)
    assert torch.allclose(steered[0] - base[0], (2.0 * dirs[0]).expand_as(base[0]), atol=1e-5)


def test_lens_in_a_lora_loop_with_drift_and_timeline(setup, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, sae, ids = setup
    lora = get_peft_model(ps.load_model("tiny-llama")[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lens = ConceptLens(lora, sae, LAYER, probe_inputs=ids["input_ids"], probe_mask=ids["attention_mask"], drift_every=2)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    with lens.attach(), LearningFilter(sae_directions(sae, [0]), "suppress", layer=LAYER).attach(lora):
        for _ in range(4):
            loss = _loss(lora, ids)
            loss.backward()
            lens.step()
            opt.step()
            opt.zero_grad()
    assert lens.timeline.steps == [0, 1, 2, 3] and len(lens.timeline.drift) == 3
    assert lens.timeline.drift[-1].abs().sum() > 0  # training moved the latents
    summary = lens.save(tmp_path)
    assert (tmp_path / "timeline.safetensors").exists() and summary["top_effect"]
    assert len(lens.plot_specs(summary)) == 2


def test_trainer_callback(setup, tmp_path):
    from transformers import Trainer, TrainingArguments

    model, sae, ids = setup
    fresh, _ = ps.load_model("tiny-llama")
    lens = ConceptLens(fresh, sae, LAYER)
    rows = [{"input_ids": ids["input_ids"][i], "attention_mask": ids["attention_mask"][i], "labels": ids["input_ids"][i]} for i in range(2)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
    before = [dict(b._forward_hooks) for b in ps.find_blocks(fresh).layers]
    Trainer(model=fresh, args=args, train_dataset=rows, callbacks=[ConceptCallback(lens)]).train()
    assert len(lens.timeline.steps) == 3 and all(e.abs().sum() > 0 for e in lens.timeline.effects)
    assert [dict(b._forward_hooks) for b in ps.find_blocks(fresh).layers] == before  # the callback removed its hook


def test_weighted_steer_spec_adds_the_weighted_sum(setup):
    """'steer=C:i*w,j*u' adds C·(w·d_i + u·d_j) to the residual stream (exact, float32 tolerance 1e-5)."""
    model, sae, _ = setup
    spec = filter_spec("steer", [3, 7], [2.0, -0.5], value=4.0)
    assert spec == "steer=4:3*2,7*-0.5"
    assert filter_spec("steer", [3, 7], [2.0, -0.5], value="auto") == "steer=auto:3*2,7*-0.5"
    filt = parse_filter(spec, LAYER, sae)
    h = torch.randn(2, 5, 64)
    d = sae_directions(sae, [3, 7])
    torch.testing.assert_close(filt.edit(model)(h), h + 4.0 * (2.0 * d[0] - 0.5 * d[1]), atol=1e-5, rtol=0)
    assert parse_filter(filter_spec("suppress", [3, 7]), LAYER, sae).directions.shape == (2, 64)  # span of two rows
    one = parse_filter(filter_spec("ablate", [3, 7], [2.0, -0.5]), LAYER, sae).directions  # one weighted direction
    torch.testing.assert_close(one, (2.0 * d[0] - 0.5 * d[1])[None], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="malformed"):
        parse_filter("steer=4:3*x", LAYER, sae)


def test_fit_steer_coef_picks_the_lowest_loss(tiny_models):
    """steer=auto: the fitted coefficient is the grid point with the lowest trained-token loss (recomputed here)."""
    from probescope.finetune.concepts import fit_steer_coef
    from probescope.finetune.runner import collate, encode_example, masked_lm_loss

    model, tok = tiny_models["tiny-llama"]
    enc = [encode_example(tok, ("the cat sat", " on the mat"), 32), encode_example(tok, ("two plus", " two is four"), 32)]
    batch = collate(enc, tok.pad_token_id)
    torch.manual_seed(0)
    filt = LearningFilter(torch.randn(1, 64), "steer", layer=LAYER, coef=None)
    with pytest.raises(ValueError, match="not fitted"):
        filt.edit(model)
    grid = (0.0, 0.5, 1.0, 3.0)
    curve = fit_steer_coef(model, filt, [batch], grid=grid)
    with torch.no_grad():
        loss0, n0 = masked_lm_loss(model, batch)
    assert [c for c, _ in curve] == list(grid)
    assert abs(curve[0][1] - float(loss0) / n0) < 1e-5  # coefficient 0 is the unsteered model
    assert filt.coef == min(curve, key=lambda t: t[1])[0]
    assert len({round(v, 6) for _, v in curve}) == len(grid)  # the direction does change the loss
    with pytest.raises(ValueError, match="not 'ablate'"):
        fit_steer_coef(model, LearningFilter(torch.randn(1, 64), "ablate", layer=LAYER), [batch])


def test_bad_inputs(setup):
    model, sae, _ = setup
    with pytest.raises(ValueError, match="filter mode 'shrink'"):
        LearningFilter(torch.zeros(1, 64), "shrink")
    with pytest.raises(ValueError, match="width 32"):
        LearningFilter(torch.ones(1, 32), "suppress").edit(model)
    with pytest.raises(ValueError, match="out of range"):
        sae_directions(sae, [10_000])
    with pytest.raises(ValueError, match="malformed"):
        parse_filter("suppress", LAYER, sae)
    big = SAE(SAEConfig(d_in=32, arch="topk", expansion=2, k=4))
    with pytest.raises(ValueError, match="does not match"):
        ConceptLens(model, big, LAYER)
    assert pca_directions(torch.zeros(5, 64), torch.ones(5, 64)).shape == (1, 64)


def test_train_cli_with_lens_and_filter(tmp_path):
    import json
    import subprocess
    import sys

    from probescope.sae import save_sae

    sae = SAE(SAEConfig(d_in=64, arch="topk", expansion=4, k=8, hook_in=f"resid_post.{LAYER}", model="tiny-llama"), seed=0)
    save_sae(sae, tmp_path / "sae")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "probescope", "train", "--model", "tiny-llama", "--data", "pirate-arith",
                        "--lens", str(tmp_path / "sae"), "--filter", "suppress:0,1", "--filter", "steer=auto:2*1.5,3", "--layer", str(LAYER),
                        "--max-steps", "3", "--n-train", "16", "--n-eval", "4", "--batch-size", "4", "--drift-every", "1",
                        "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3 and m["top_concepts"] and 0 <= m["eval"]["style_rate"] <= 1
    ev = m["eval"]  # the per-style arithmetic split adds back up to the total
    parts = [(ev["arith_acc_styled"] or 0) * ev["style_rate"], (ev["arith_acc_unstyled"] or 0) * (1 - ev["style_rate"])]
    assert abs(sum(parts) - ev["arith_acc"]) < 1e-9
    assert len(ev["correct"]) == len(ev["styled"]) == ev["n"] == 4 and sum(ev["correct"]) / 4 == ev["arith_acc"]
    assert m["steer_coef"]["steer=auto:2*1.5,3"] in STEER_GRID  # fitted before training, recorded
    assert (out / "timeline.safetensors").exists() and (out / "report.html").exists()
    tl = load_timeline(out)
    assert tl.steps == [0, 1, 2] and tl.top(1)[0][0] == m["top_concepts"][0]["latent"]
    bad = subprocess.run([sys.executable, "-m", "probescope", "train", "--model", "tiny-llama", "--filter", "suppress:1",
                          "--out", str(tmp_path / "bad"), "--quiet", "--layer", "1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--lens" in bad.stderr


def test_pirate_style_share_is_seeded_and_exact_at_the_ends():
    from probescope.tasks import pirate

    train, _ = pirate.splits(200, 10, 0)
    styled = [pirate.style_score(e[1]["content"]) for e in pirate.examples(train, share=0.75, seed=0)]
    assert 0.65 <= sum(styled) / len(styled) <= 0.85  # binomial(200, 0.75): ±3 sd
    assert styled == [pirate.style_score(e[1]["content"]) for e in pirate.examples(train, share=0.75, seed=0)]
    assert all(pirate.style_score(e[1]["content"]) for e in pirate.examples(train, share=1.0))
    assert not any(pirate.style_score(e[1]["content"]) for e in pirate.examples(train, share=0.0))
    assert not any(pirate.style_score(e[1]["content"]) for e in pirate.examples(train, pirate=False))
    assert all(pirate.arith_correct(e[1]["content"], it) for e, it in zip(pirate.examples(train, share=0.5), train))
    with pytest.raises(ValueError, match="share 1.5"):
        pirate.examples(train, share=1.5)


def test_both_styles_state_the_arithmetic_the_same_way():
    """The style lives only in the words around "a op b = r. The answer is r", so the two things stay separable."""
    import random

    from probescope.tasks import pirate

    for it in pirate.items(30, seed=5):
        for styled in (True, False):
            for seed in range(6):
                text = pirate.answer(it, random.Random(seed), styled)
                assert f"{it.a} {it.op} {it.b} = {it.result}. The answer is {it.result}" in text
                assert pirate.arith_correct(text, it) and pirate.style_score(text) == styled


def test_paired_diff_interval():
    from probescope.finetune.train import paired_diff

    same = paired_diff([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["diff"] == 0 and same["ci95"] == [0, 0]  # identical outcomes: no uncertainty at all
    r = paired_diff([1] * 60 + [0] * 40, [1] * 50 + [0] * 50)  # 10 questions flipped to right, none to wrong
    assert abs(r["diff"] - 0.10) < 1e-12 and 0.04 < r["ci95"][0] < 0.10 < r["ci95"][1] < 0.16
    with pytest.raises(ValueError, match="equal"):
        paired_diff([1], [1, 0])
