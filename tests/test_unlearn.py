"""Unlearning on a tiny model first taught a few fictitious facts: RMU forgets, the attacks run, bad input is refused.

The tiny llama (4 layers, d 64, byte tokenizer) is taught 12 fictitious countries' capitals and national animals
(full fine-tune, 240 seeded steps: recall 1.0 on an AMD EPYC, where the earlier 160 gave 0.875 below the test's 0.9);
capitals are then unlearned (4 held out and scored), animals kept.
"""

import json

import pytest
import torch

from probescope.tasks.entities import entities, facts, sentences

pytestmark = pytest.mark.usefixtures("one_thread")


def _taught(steps: int = 240):
    from probescope.core.models.tiny import tiny_model
    from probescope.unlearn.methods import lm_loss
    from probescope.unlearn.train import make_batches

    model, tok = tiny_model("llama")
    ents = entities(12, seed=0)
    items = facts(ents, ("capital", "animal"))
    batch = make_batches(tok, sentences(items), len(items), 64, 0)[0]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(steps):
        loss = lm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, items


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """(model folder, cloze items, files) of the taught tiny model."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok, items = _taught()
    finally:
        torch.set_num_threads(old)
    d = tmp_path_factory.mktemp("taught")
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    caps = [it for it in items if it.key.endswith(":capital")]
    animals = [it for it in items if it.key.endswith(":animal")]
    (d / "forget.jsonl").write_text("".join(json.dumps({"prompt": it.prompt, "answer": it.answer,
                                                        "choices": list(it.choices())}) + "\n" for it in caps))
    (d / "retain.jsonl").write_text("".join(json.dumps({"text": it.statement()}) + "\n" for it in animals))
    (d / "retain_eval.jsonl").write_text("".join(json.dumps({"prompt": it.prompt, "answer": it.answer,
                                                             "choices": list(it.choices())}) + "\n" for it in animals))
    return d, items


def _cfg(d, out, **kw):
    from probescope.unlearn import UnlearnConfig, UnlearnRunConfig

    u = dict(method="rmu", layer=2, steps=80, lr=3e-3, batch_size=4, checkpoint_every=20)
    u.update(kw.pop("unlearn", {}))
    return UnlearnRunConfig(model=str(d / "model"), forget=str(d / "forget.jsonl"), retain=str(d / "retain.jsonl"),
                      retain_eval=str(d / "retain_eval.jsonl"), n_eval=4, utility_docs=4, out=str(out),
                      unlearn=UnlearnConfig(**u), **kw)


def test_taught_model_recalls_its_facts(taught):
    from probescope import load_model
    from probescope.unlearn import cloze_correct

    d, items = taught
    model, tok = load_model(str(d / "model"))
    acc = sum(cloze_correct(model, tok, items)) / len(items)
    assert acc >= 0.9, acc


def test_rmu_forgets_held_out_facts_and_keeps_the_rest(taught, tmp_path):
    from probescope.core.io import load_tensors
    from probescope.unlearn import run_unlearn

    d, _ = taught
    m = run_unlearn(_cfg(d, tmp_path / "rmu", task_eval="arithmetic"), quiet=True)
    b, a = m["before"], m["after"]
    assert b["forget"]["acc"] == 1.0 and m["site"] == "resid_post.2"
    # the named task is scored before and after (40 generated sums, 4-way cloze) and has its goal
    assert b["task"]["n"] == a["task"]["n"] == 40 and b["task"]["chance"] == 0.25
    assert "task_within_3_points" in m["goals"]
    assert a["forget"]["acc"] <= 0.5, a  # 4 held-out facts: at most 2 right (chance 1 of 4)
    assert a["retain"]["acc"] >= b["retain"]["acc"] - 0.25, (b, a)
    assert a["utility"]["ppl"] < 2 * b["utility"]["ppl"]
    w = load_tensors(tmp_path / "rmu" / "weights.safetensors")
    assert w and all(".mlp." in k for k in w)  # only MLP tensors of blocks 0..2 are saved
    rec = json.loads((tmp_path / "rmu" / "unlearn.json").read_text())
    assert rec["site"] == "resid_post.2" and rec["updated"] == ["mlp_out.0", "mlp_out.1", "mlp_out.2"]
    assert (tmp_path / "rmu" / "report.html").exists()


@pytest.mark.parametrize("method", ["ga", "npo", "rmu-adv"])
def test_every_method_runs(taught, tmp_path, method):
    from probescope.unlearn import run_unlearn

    d, _ = taught
    lr = {"ga": 1e-3, "npo": 1e-3}.get(method)
    m = run_unlearn(_cfg(d, tmp_path / method, unlearn={"method": method, "steps": 10, "lr": lr}), quiet=True)
    assert m["method"] == method and set(m["after"]) == {"forget", "retain", "utility"}


def test_resume_after_a_kill_matches_an_unbroken_run(taught, tmp_path):
    from probescope import load_model
    from probescope.core.io import load_tensors
    from probescope.unlearn import UnlearnConfig, unlearn

    d, items = taught
    forget = [it.statement() for it in items if it.key.endswith(":capital")]
    retain = [it.statement() for it in items if it.key.endswith(":animal")]
    cfg = dict(method="rmu", layer=2, steps=8, batch_size=4, checkpoint_every=4)
    m1, tok = load_model(str(d / "model"))
    unlearn(m1, tok, forget, retain, UnlearnConfig(**cfg), tmp_path / "a", quiet=True)
    m2, _ = load_model(str(d / "model"))
    unlearn(m2, tok, forget, retain, UnlearnConfig(**{**cfg, "steps": 4}), tmp_path / "b", quiet=True)  # "killed"
    m3, _ = load_model(str(d / "model"))
    rec = unlearn(m3, tok, forget, retain, UnlearnConfig(**cfg), tmp_path / "b", quiet=True)  # resumed at step 4
    assert [h["step"] for h in rec["history"]] == list(range(1, 9))
    wa, wb = load_tensors(tmp_path / "a" / "weights.safetensors"), load_tensors(tmp_path / "b" / "weights.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(taught, tmp_path, monkeypatch):
    from probescope import load_model
    from probescope.unlearn import UnlearnConfig, unlearn
    from probescope.unlearn.methods import RMU

    d, items = taught
    forget = [it.statement() for it in items if it.key.endswith(":capital")]
    retain = [it.statement() for it in items if it.key.endswith(":animal")]
    real = RMU.loss

    def loss(self, ctx, step, fi, ri):
        out, stats = real(self, ctx, step, fi, ri)
        return (out * float("nan"), stats) if step == 5 else (out, stats)

    monkeypatch.setattr(RMU, "loss", loss)
    m, tok = load_model(str(d / "model"))
    with pytest.raises(ValueError, match=r"nan at step 5.*checkpoint \(step 4\)"):
        unlearn(m, tok, forget, retain, UnlearnConfig(layer=2, steps=8, checkpoint_every=2), tmp_path / "n", quiet=True)
    state = json.loads((tmp_path / "n" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4


def test_bad_input_is_refused_with_the_fix(taught, tmp_path):
    from probescope import load_model
    from probescope.unlearn import UnlearnConfig, check_sets, register, run_unlearn, unlearn

    d, items = taught
    with pytest.raises(ValueError, match="in both the forget and the retain set.*capital of"):
        check_sets([items[0].statement(), "x y"], [items[0].statement()])
    with pytest.raises(ValueError, match="forget set is empty"):
        check_sets([], ["a b c"])
    with pytest.raises(ValueError, match="retain set is empty"):
        check_sets(["a b c"], [])
    m, tok = load_model(str(d / "model"))
    with pytest.raises(ValueError, match="out of range: this model has 4 layers"):
        unlearn(m, tok, ["a b c d"], ["e f g h"], UnlearnConfig(layer=9), tmp_path / "x", quiet=True)
    with pytest.raises(ValueError, match="--method 'xyz' is not one of rmu, rmu-adv, ga, npo"):
        UnlearnConfig(method="xyz")
    with pytest.raises(ValueError, match="--mlp-lora-r -1 is out of range: it must be ≥ 0"):
        UnlearnConfig(mlp_lora_r=-1)
    late = UnlearnConfig()
    late.steps = 0  # set after construction: refused when the run starts, before any training
    with pytest.raises(ValueError, match="--steps 0 is out of range: it must be ≥ 1"):
        unlearn(m, tok, ["a b c d"], ["e f g h"], late, tmp_path / "x", quiet=True)
    with pytest.raises(ValueError, match="already registered"):
        register("rmu")(type("Again", (), {}))
    # an untaught model never knew the facts: accuracy at chance before, so unlearning would be meaningless
    cfg = _cfg(d, tmp_path / "never", known_only=False)
    cfg.model = "tiny-llama"
    with pytest.raises(ValueError, match="never knew the forget set"):
        run_unlearn(cfg, quiet=True)


def test_cli_unlearn_then_audit(taught, tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    d, _ = taught
    out = tmp_path / "cli"
    r = CliRunner()
    res = r.invoke(app, ["unlearn", "--model", str(d / "model"), "--forget", str(d / "forget.jsonl"),
                         "--retain", str(d / "retain.jsonl"), "--retain-eval", str(d / "retain_eval.jsonl"),
                         "--n-eval", "4", "--layer", "2", "--steps", "80", "--lr", "3e-3", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["site"] == "resid_post.2" and m["after"]["forget"]["acc"] <= 0.5
    f, n = m["facts"], m["before"]["forget"]["n"]  # #36: the facts by name, consistent with the accuracies
    assert len(f["forgotten"]) + len(f["kept"]) == round(m["before"]["forget"]["acc"] * n)
    assert len(f["forgotten"]) + len(f["kept"]) + len(f["never_known"]) == n
    assert all(isinstance(x, str) and x for x in f["forgotten"] + f["kept"])
    res = r.invoke(app, ["unlearn", "audit", str(out), "--steps", "2,5", "--spans", "1", "--json"])
    assert res.exit_code == 0, res.output
    a = json.loads(res.stdout)["audit"]
    assert {"relearn_half_forget_5", "relearn_unrelated_2", "direction_train_k1", "direction_scored_k1", "probe_max_before"} <= set(a)
    audit = json.loads((out / "audit.json").read_text())
    assert audit["site"] == "resid_post.2" and len(audit["probe"]["before"]) == 4
    assert "Relearning" in (out / "report.html").read_text()
    res = r.invoke(app, ["unlearn", "--model", str(d / "model"), "--forget", str(d / "forget.jsonl"),
                         "--retain", str(d / "forget.jsonl"), "--n-eval", "4", "--out", str(tmp_path / "bad"), "--quiet"])
    assert res.exit_code == 2 and "in both the forget and the retain set" in res.output


def test_direction_removal_undoes_a_one_direction_shift(taught):
    """The attack works when forgetting *is* one direction: a fixed vector added at resid_post.1 hides at least 3 of 6
    capitals; projecting the estimated misdirection out at resid_post.2 brings back at least half of what was lost.
    The shift is large (norm 80) so the outcome does not hang on the CPU's rounding: at norm 30 it hid 3 of 6 on an
    AVX2 machine and 1 of 6 on an AMX one; at norm 60 and 100 seeds 1-3 hide 3-4 and recover 67-75% on AMX."""
    import copy

    from probescope import load_model
    from probescope.core.hooks import add_vector
    from probescope.core.sites import site_hooks
    from probescope.unlearn import cloze_correct
    from probescope.unlearn.audit import direction_removal

    d, items = taught
    model, tok = load_model(str(d / "model"))
    caps = [it for it in items if it.key.endswith(":capital")]
    train, held = caps[:6], caps[6:]
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    shifted = copy.deepcopy(model)
    with site_hooks(shifted, {"resid_post.1": add_vector(80 * v / v.norm())}):
        before, after = cloze_correct(model, tok, held), cloze_correct(shifted, tok, held)
        res = direction_removal(shifted, model, tok, train, held, [], [], before, after, layer=1, spans=(1,))
    assert sum(before) == 6 and sum(after) <= 3, after
    row = res["rows"][0]
    assert row["sites"] == ["resid_post.2"] and row["recovered"] >= 0.5, row


def test_rmu_with_lora_on_the_mlps(taught, tmp_path):
    """--mlp-lora-r: a rank-r LoRA on each MLP matrix of the update layers (a weight parametrization, so hooks and sites
    are untouched), merged at the end: the saved tensors are the same MLP weights a plain run saves, applying them
    to a fresh model gives the unlearned model, and nothing of the LoRA is left on the model."""
    from torch.nn.utils import parametrize

    from probescope import load_model
    from probescope.core.io import load_tensors
    from probescope.unlearn import apply_weights, run_unlearn
    from probescope.unlearn.train import add_mlp_lora, remove_mlp_lora

    d, _ = taught
    model, tok = load_model(str(d / "model"))
    m = run_unlearn(_cfg(d, tmp_path / "lora", unlearn={"mlp_lora_r": 8, "lr": 1e-2}), model=model, tok=tok, quiet=True)
    assert m["after"]["forget"]["acc"] < m["before"]["forget"]["acc"], (m["before"], m["after"])
    rec = json.loads((tmp_path / "lora" / "unlearn.json").read_text())
    assert rec["trained"].startswith("rank-8 LoRA")
    w = load_tensors(tmp_path / "lora" / "weights.safetensors")
    assert w and all(".mlp." in k and "parametrizations" not in k for k in w)
    assert not any(parametrize.is_parametrized(mod) for mod in model.modules())
    fresh, _ = load_model(str(d / "model"))
    apply_weights(fresh, tmp_path / "lora")
    ids = tok("The capital of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    # B starts at zero: adding the LoRA changes nothing; dropping it restores the weights bitwise
    before = {n: p.clone() for n, p in fresh.named_parameters()}
    params = add_mlp_lora(fresh, [0, 1], 4, seed=0)
    assert len(params) == 2 * 2 * 3  # A and B for up/gate/down of two blocks
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
        for p in params.values():
            p.add_(0.1)
    remove_mlp_lora(fresh, merge=False)
    assert all(torch.equal(before[n], p) for n, p in fresh.named_parameters())


def test_fact_outcomes_name_each_fact():
    """#36: which held-out facts went and which stayed, by name (no joining subject.json and after.json by index)."""
    from probescope.tasks.cloze import ClozeItem
    from probescope.unlearn.runner import fact_outcomes

    items = [ClozeItem("The capital of A is", " X"), ClozeItem("The capital of B is", " Y"),
             ClozeItem("The capital of C is", " Z")]
    before = {"forget": {"correct": [True, True, False]}, "retain": {"correct": [True]}}
    after = {"forget": {"correct": [False, True, True]}, "retain": {"correct": [False]}}
    out = fact_outcomes(before, after, {"forget_eval": items, "retain_eval": [ClozeItem("The capital of D is", " W")]})
    assert out == {"forgotten": ["The capital of A is X"], "kept": ["The capital of B is Y"],
                   "never_known": ["The capital of C is Z"], "retain_lost": ["The capital of D is W"]}
