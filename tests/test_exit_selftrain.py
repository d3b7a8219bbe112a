"""Early exit during training (#34) on tiny-llama: the expert-iteration loop with exit on and off, its token
accounting, resume after a kill mid-round, and bad input. tiny-llama cannot reason, so these test the mechanics
(which problems, which tokens, which files), not whether self-training helps (bench/selftrain.py measures that on
the reasoner).

The exit probe is test_exit's small random probe (layer 2, recorded for tiny-llama); its confidences on tiny-llama
sit near 0.2603, so τ = 0.2603 with a check every 3 tokens makes some rollouts exit and others not (asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

TAU = 0.2603
SMALL = ["--model", "tiny-llama", "--rounds", "2", "--problems", "4", "--k", "2", "--max-new-tokens", "16",
         "--n-test", "4", "--drift-n", "2", "--every", "3", "--lora-steps", "2", "--lora-batch", "4"]


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    from test_exit import _probe

    from probescope.exit.calibrate import calibration_binding

    d = tmp_path_factory.mktemp("probe") / "probe"
    p = _probe(2, 64)
    p.save(d)
    (d / "calibration.json").write_text(json.dumps({"tau": TAU, "mode": "probe", **calibration_binding(p, "mcq")}))
    return d


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def _rows(run, rnd):
    return json.loads((run / "rounds" / f"r{rnd:02d}" / "rollouts.json").read_text())["rows"]


def _untimed(obj):
    """The metrics without wall-clock figures (the only thing two identical runs may differ in)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not (k.endswith("_s") or k == "seconds" or k == "plots")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def test_selftrain_exit_on_and_off_same_problems_fewer_tokens(tmp_path, probe_dir):
    """Exit on and off (CLI, --json) see the same rollout problems and prompts every round; exit on cuts some
    rollouts (stop "exit") and generates fewer tokens, off cuts none; each round's rollout tokens are the sum of its
    rows' generated tokens; round 0's rows (the same start model) equal generate_with_exit run here on the same
    prompts, token for token; an exited row's tokens are a prefix of the full row's."""
    from probescope.core.models import load_model
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.probes.base import load_probe

    r = CliRunner()
    on, off = tmp_path / "on", tmp_path / "off"
    m_on = _json(r.invoke(app, ["exit", "selftrain", *SMALL, "--probe", str(probe_dir), "--out", str(on), "--json"]))
    m_off = _json(r.invoke(app, ["exit", "selftrain", *SMALL, "--probe", str(probe_dir), "--out", str(off), "--exit",
                                 "off", "--json"]))
    assert m_on["rounds_done"] == m_off["rounds_done"] == 2 and not m_on["stopped"]
    assert (on / "report.html").exists() and (off / "report.html").exists()
    for rnd in range(2):
        a, b = _rows(on, rnd), _rows(off, rnd)
        assert [x["prompt"] for x in a] == [x["prompt"] for x in b] and len(a) == 8  # 4 problems x k=2
        assert len({x["prompt"] for x in a}) == 8  # rollout 2 of a problem shows its options in another order
        for rows, m in ((a, m_on), (b, m_off)):
            assert m["rounds"][rnd]["rollout_tokens"] == sum(x["generated"] for x in rows)
            assert m["rounds"][rnd]["accepted"] == sum(x["correct"] for x in rows)
        assert all(x["stop"] != "exit" for x in b)
    rows_on, rows_off = _rows(on, 0), _rows(off, 0)
    n_exit = sum(x["stop"] == "exit" for x in rows_on)
    assert 0 < n_exit < len(rows_on), n_exit  # τ splits the rollouts
    assert m_on["totals"]["rollout_tokens"] < m_off["totals"]["rollout_tokens"]
    assert m_on["totals"]["rollout_tokens"] == sum(x["rollout_tokens"] for x in m_on["rounds"])
    # the accounting is the tokens a plain generate_with_exit call decodes on the same prompts, same start model
    model, tok = load_model("tiny-llama")
    prompts = [x["prompt"] for x in rows_on]
    full = generate_with_exit(model, tok, prompts, None, ExitPolicy(kind="never"), max_new_tokens=16).rows
    cut = generate_with_exit(model, tok, prompts, load_probe(probe_dir),
                             ExitPolicy(kind="probe", tau=TAU, mode="probe", boundary="every", every=3),
                             max_new_tokens=16).rows
    assert [f.generated for f in full] == [x["generated"] for x in rows_off]
    assert [c.generated for c in cut] == [x["generated"] for x in rows_on]
    assert [c.answer for c in cut] == [x["answer"] for x in rows_on]
    for c, f in zip(cut, full):
        assert c.fed_ids == f.fed_ids[: len(c.fed_ids)]
    # the same held-out test sample scored each round, and drift measured on the same monitor problems
    assert m_on["rounds"][0]["accuracy"] == m_off["rounds"][0]["accuracy"]  # same start model, same test problems
    assert m_on["rounds"][0]["drift"] == m_off["rounds"][0]["drift"]
    assert m_on["final"]["n"] == 4 and len(m_on["final"]["correct"]) == 4


def test_selftrain_resumes_a_kill_mid_round_to_the_same_result(tmp_path, probe_dir, monkeypatch):
    """A run killed in round 1's LoRA training (after its first checkpoint) and run again ends with the same metrics
    (every figure but wall-clock) and the same adapters, bit for bit, as an uninterrupted run."""
    from probescope.core.io import load_tensors
    from probescope.exit.selftrain import SelfTrainConfig, run_selftrain
    from probescope.finetune import runner

    def cfg(out):
        return SelfTrainConfig(model="tiny-llama", out=str(out), probe=str(probe_dir), rounds=2, problems=4, k=2,
                               max_new_tokens=16, n_test=4, drift_n=2, every=3, lora_steps=4, lora_batch=4, quiet=True)

    whole = run_selftrain(cfg(tmp_path / "whole"))
    real, calls = runner.LoraTrainer.train_step, []

    def killing(self, batches):
        calls.append(1)
        if len(calls) == 7:  # round 0: steps 1-4; round 1: checkpoint after step 1 (every 1), then the kill at step 3
            raise KeyboardInterrupt
        return real(self, batches)

    monkeypatch.setattr(runner.LoraTrainer, "train_step", killing)
    with pytest.raises(KeyboardInterrupt):
        run_selftrain(cfg(tmp_path / "killed"))
    assert (tmp_path / "killed" / "rounds" / "r01" / "rollouts.json").exists()
    assert not (tmp_path / "killed" / "rounds" / "r01" / "train.json").exists()
    monkeypatch.setattr(runner.LoraTrainer, "train_step", real)
    resumed = run_selftrain(cfg(tmp_path / "killed"))
    assert _untimed(resumed) == _untimed(whole)
    for rnd in range(2):
        a = load_tensors(tmp_path / "whole" / "rounds" / f"r{rnd:02d}" / "lora" / "adapter" / "adapter_model.safetensors")
        b = load_tensors(tmp_path / "killed" / "rounds" / f"r{rnd:02d}" / "lora" / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_selftrain_takes_a_model_object_and_leaves_it_unchanged(tmp_path, probe_dir):
    """`run_selftrain(cfg, model, tokenizer)` runs on the given model (the Python API's way) with the same figures as
    the run that loads `cfg.model`, and never trains the object it was given (each round works on a copy)."""
    from probescope import load_model
    from probescope.exit.selftrain import SelfTrainConfig, run_selftrain

    def cfg(out):
        return SelfTrainConfig(model="tiny-llama", out=str(out), probe=str(probe_dir), rounds=2, problems=4, k=2,
                               max_new_tokens=16, n_test=4, drift_n=0, lora_steps=2, lora_batch=4, quiet=True)

    loaded = run_selftrain(cfg(tmp_path / "loaded"))
    model, tok = load_model("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    given = run_selftrain(cfg(tmp_path / "given"), model, tok)
    assert _untimed(given) == _untimed(loaded)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_selftrain_bad_input_is_refused_before_anything_is_written(tmp_path, probe_dir):
    """k < 1, a problem file without gradable answers, a probe of another model: one-line errors naming the value
    and the fix, and no run folder."""
    from probescope.exit.calibrate import calibration_binding
    from probescope.probes.base import load_probe

    r = CliRunner()
    out = tmp_path / "run"
    res = r.invoke(app, ["exit", "selftrain", *SMALL, "--probe", str(probe_dir), "--out", str(out), "--k", "0"])
    assert res.exit_code != 0 and "--k 0" in res.output and "≥ 1" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"question": f"What is 2 + {i}?", "options": ["3", "4", "5", "6"]}) + "\n"
                           for i in range(12)))
    res = r.invoke(app, ["exit", "selftrain", *SMALL, "--probe", str(probe_dir), "--out", str(out), "--data", str(bad)])
    assert res.exit_code != 0 and "gradable" in res.output and "no answer" in res.output
    other = tmp_path / "other"
    p = load_probe(probe_dir)
    p.model_id = "smollm2-135m-reasoner"
    p.save(other)
    (other / "calibration.json").write_text(json.dumps({"tau": TAU, **calibration_binding(p, "mcq")}))
    res = r.invoke(app, ["exit", "selftrain", *SMALL, "--probe", str(other), "--out", str(out)])
    assert res.exit_code != 0 and "trained on model 'smollm2-135m-reasoner', not 'tiny-llama'" in res.output
    assert "--allow-other-model" in res.output
    assert not out.exists()
    from probescope.exit.selftrain import SelfTrainConfig, run_selftrain

    with pytest.raises(ValueError, match="--k 0 is out of range"):
        run_selftrain(SelfTrainConfig(model="tiny-llama", out=str(out), k=0))
    assert not out.exists()


def test_a_round_that_accepts_no_trace_stops_with_a_note(tmp_path):
    """Problems the model answers wrong (a file whose answer is never the letter tiny-llama picks) accept no trace:
    the run stops after round 0 with a note naming the fix, writes its metrics (no LoRA trained), no crash."""
    from probescope.core.models import load_model
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.prompts import make_prompts
    from probescope.tasks import mcq

    model, tok = load_model("tiny-llama")
    splits = ["train"] * 8 + ["test"]  # a problem file needs 8 train rows (what `exit train` fits a probe on)
    probs = [mcq.MCQProblem(id=str(i), split=s, kind="file", options=tuple(str(4 * (i + 3) + d) for d in range(4)),
                            question=f"Ana has {i + 3} bags with 4 apples each. How many apples does she have?",
                            answer=0, result="") for i, s in enumerate(splits)]
    answers = [r.answer for r in generate_with_exit(model, tok, make_prompts(probs, tok), None, ExitPolicy(kind="never"),
                                                    max_new_tokens=16).rows]
    rows = [{"question": p.question, "options": list(p.options), "answer": next(L for L in "ABCD" if L != a),
             "split": p.split} for p, a in zip(probs, answers)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["exit", "selftrain", "--model", "tiny-llama", "--data", str(data), "--exit", "off",
                                   "--drift-n", "0", "--k", "1", "--problems", "2", "--rounds", "2",
                                   "--max-new-tokens", "16", "--out", str(tmp_path / "run"), "--json"])
    m = _json(res)
    assert m["rounds_done"] == 0 and len(m["rounds"]) == 1 and m["rounds"][0]["accepted"] == 0
    assert "accepted no trace" in m["stopped"] and "--problems" in m["stopped"]
    assert m["final"]["n"] == 1 and not (tmp_path / "run" / "rounds" / "r00" / "train.json").exists()
    assert math.isfinite(m["totals"]["rollout_tokens"])


@pytest.mark.slow
def test_selftrain_on_the_reasoner_at_toy_size(tmp_path):
    """The shipped reasoner with its shipped probe and τ, one round at toy size (1 problem, k=1, one LoRA step):
    the probe cuts the first rollout, which then costs fewer tokens than the same problem reasoned in full by the
    same model (the monitor's generation of that problem); the first rollout's kept tokens are a prefix of it."""
    from probescope.exit.selftrain import SelfTrainConfig, run_selftrain

    m = run_selftrain(SelfTrainConfig(out=str(tmp_path / "run"), rounds=1, problems=1, k=1, n_test=1, drift_n=1,
                                      lora_steps=1, lora_batch=1, max_new_tokens=100, quiet=True))
    r0 = m["rounds"][0]
    rows = _rows(tmp_path / "run", 0)
    from probescope.exit.calibrate import load_calibration
    from probescope.exit.live import shipped_probe
    from probescope.probes.base import load_probe

    path = shipped_probe(m["model"])  # the default reasoner's (smollm2-135m-reasoner-v2)
    assert m["model"] == "smollm2-135m-reasoner-v2"
    assert m["tau_start"] == pytest.approx(load_calibration(path, load_probe(path))["tau"])  # its shipped τ
    assert rows[0]["stop"] == "exit" and rows[0]["generated"] < r0["monitor_tokens"]
    assert r0["rollout_tokens"] == sum(x["generated"] for x in rows)
    assert 0 <= r0["drift"]["agreement_in"] <= 1 and r0["drift"]["n"] == 1
    assert m["rounds_done"] == (1 if r0["accepted"] else 0)


def test_recalibrated_tau_and_completed_traces_are_counted(tmp_path, probe_dir):
    """--drift recalibrate: the round's rollouts use the τ calibrated on its monitor problems, and the monitor's
    tokens are counted in the cost; --keep completed: exited correct rollouts are reasoned again in full, those
    tokens are counted in the round's rollout tokens, and the kept trace is the full one."""
    from probescope.exit.selftrain import SelfTrainConfig, run_selftrain

    m = run_selftrain(SelfTrainConfig(model="tiny-llama", out=str(tmp_path / "run"), probe=str(probe_dir), rounds=1,
                                      problems=6, k=2, max_new_tokens=16, n_test=2, drift_n=4, every=3, lora_steps=1,
                                      lora_batch=4, drift="recalibrate", recal_target=0.5, keep="completed", quiet=True))
    r0 = m["rounds"][0]
    assert r0["tau"] == r0["drift"]["recalibrated_tau"] == r0["drift"]["tau_used"] is not None
    rows = _rows(tmp_path / "run", 0)
    completed = [x for x in rows if "completed_tokens" in x]
    assert completed and all(x["stop"] == "exit" for x in completed)
    assert r0["completion_tokens"] == sum(x["completed_tokens"] for x in completed) > 0
    assert r0["rollout_tokens"] == sum(x["generated"] for x in rows) + r0["completion_tokens"]
    assert all(x["completed_tokens"] > x["generated"] for x in completed)  # the full reasoning goes on past the cut
    assert m["monitor_counted"] and m["totals"]["cost_tokens"] == r0["rollout_tokens"] + r0["monitor_tokens"]


def test_a_problem_file_with_too_few_train_rows_names_selftrain_not_exit_train(tmp_path):
    """The problem reader's floor of train rows is worded for `exit train`; raised from `exit selftrain` it names
    this command and the fix that fits it (no --n-train, which selftrain does not take)."""
    from probescope.exit.selftrain import SelfTrainConfig, Source

    rows = [{"question": f"What is 2 + {i}?", "options": [str(i + 2), "0", "1", "99"], "answer": "A"} for i in range(7)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as e:
        Source(SelfTrainConfig(model="tiny-llama", data=str(data), out=str(tmp_path / "run")))
    msg = str(e.value)
    assert "has 7 rows" in msg and "`exit selftrain` reads a problem file" in msg and "at least 8 train rows" in msg
    assert "`exit train`" not in msg and "--n-train" not in msg


def _refit_cfg(out, probe_dir, **kw):
    from probescope.exit.selftrain import SelfTrainConfig

    base = dict(model="tiny-llama", out=str(out), probe=str(probe_dir), rounds=3, problems=4, k=2, max_new_tokens=16,
                n_test=2, drift_n=2, every=3, lora_steps=2, lora_batch=4, drift="refit", refit_every=2, refit_n=12,
                recal_target=0.5, quiet=True)
    return SelfTrainConfig(**{**base, **kw})


def test_refit_happens_on_the_stated_rounds_and_its_cost_is_counted(tmp_path, probe_dir):
    """--drift refit --refit-every 2 over 3 rounds: the probe is re-fitted as round 2 starts and only then (a refit
    folder in r02 alone), on 12 new problems (8 fit, 4 calibrate) of the round-2 model; round 2's monitor and rollouts
    use that probe and its τ (the one in its calibration.json, loadable as any probe's); the refit's tokens (the
    reasoning decoded on its problems) and seconds are in round 2's record and in the run's counted totals."""
    from probescope.exit.calibrate import load_calibration
    from probescope.exit.collect import load_collected
    from probescope.probes.base import load_probe

    run = tmp_path / "run"
    from probescope.exit.selftrain import run_selftrain

    m = run_selftrain(_refit_cfg(run, probe_dir))
    assert m["rounds_done"] == 3 and m["refit_rounds"] == [2] and m["refit_counted"]
    assert [(run / "rounds" / f"r{r:02d}" / "refit.json").exists() for r in range(3)] == [False, False, True]
    assert [r["probe_from"] for r in m["rounds"]] == ["start", "start", "refit in round 2"]
    r2 = m["rounds"][2]
    col = load_collected(run / "rounds" / "r02" / "refit" / "collect")
    assert (len(col.split("train")), len(col.split("val"))) == (8, 4) == (r2["refit"]["n_train"], r2["refit"]["n_val"])
    assert r2["refit_tokens"] == r2["refit"]["tokens"] == sum(x["n_fed"] for x in col.rows) > 0
    probe = load_probe(run / "rounds" / "r02" / "refit" / "probe")
    assert probe.layer == load_probe(probe_dir).layer and probe.model_id == "tiny-llama"
    cal = load_calibration(run / "rounds" / "r02" / "refit" / "probe", probe, "mcq")
    assert r2["refit"]["tau"] == cal["tau"] and r2["tau"] == cal["tau"] and r2["drift"]["tau_in"] == cal["tau"]
    assert [r["tau"] for r in m["rounds"][:2]] == [TAU, TAU]
    tot = m["totals"]
    assert tot["refit_tokens"] == r2["refit_tokens"] and tot["refit_s"] == r2["refit_s"] > 0
    assert tot["cost_tokens"] == tot["rollout_tokens"] + tot["refit_tokens"]
    assert tot["wallclock_s"] == pytest.approx(tot["sampling_s"] + tot["train_s"] + tot["refit_s"], rel=1e-12)


def test_refit_resumes_after_kills_to_the_same_result(tmp_path, probe_dir, monkeypatch):
    """Refits as rounds 1 and 2 start (--refit-every 1): a run killed inside round 1's probe fit, run again and killed
    in round 2's sampling (after its refit), then run to the end, ends with the metrics (all but wall-clock) and the
    re-fitted probes, bit for bit, of an uninterrupted run."""
    from probescope.core.io import load_tensors
    from probescope.exit import train as exit_train
    from probescope.exit.selftrain import SelfTrain, run_selftrain

    whole = run_selftrain(_refit_cfg(tmp_path / "whole", probe_dir, refit_every=1))
    assert whole["refit_rounds"] == [1, 2]
    killed = tmp_path / "killed"
    real_fit = exit_train.fit_exit_probe

    def dying_fit(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(exit_train, "fit_exit_probe", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        run_selftrain(_refit_cfg(killed, probe_dir, refit_every=1))
    assert (killed / "rounds" / "r01" / "refit" / "collect" / "collect.json").exists()
    assert not (killed / "rounds" / "r01" / "refit.json").exists()
    monkeypatch.setattr(exit_train, "fit_exit_probe", real_fit)
    real_sample = SelfTrain.sample

    def dying_sample(self, model, tok, problems, tau, rnd, probe):
        if rnd == 2:
            raise KeyboardInterrupt
        return real_sample(self, model, tok, problems, tau, rnd, probe)

    monkeypatch.setattr(SelfTrain, "sample", dying_sample)
    with pytest.raises(KeyboardInterrupt):
        run_selftrain(_refit_cfg(killed, probe_dir, refit_every=1))
    assert (killed / "rounds" / "r02" / "refit.json").exists()
    monkeypatch.setattr(SelfTrain, "sample", real_sample)
    resumed = run_selftrain(_refit_cfg(killed, probe_dir, refit_every=1))
    assert _untimed(resumed) == _untimed(whole)
    for rnd in (1, 2):
        a = load_tensors(tmp_path / "whole" / "rounds" / f"r{rnd:02d}" / "refit" / "probe" / "probe.safetensors")
        b = load_tensors(killed / "rounds" / f"r{rnd:02d}" / "refit" / "probe" / "probe.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refit_refuses_a_sample_too_small_to_fit(tmp_path, probe_dir):
    """--refit-n below 12 leaves fewer than the 8 problems a probe is fitted on: refused (CLI) naming the value and
    the floor, before anything is written."""
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["exit", "selftrain", *SMALL, "--probe", str(probe_dir), "--out", str(out),
                                   "--drift", "refit", "--refit-n", "9"])
    assert res.exit_code != 0 and "--refit-n 9" in res.output and "≥ 12" in res.output
    assert not out.exists()


def test_refit_keep_better_keeps_the_probe_that_reads_the_current_model_better(tmp_path, probe_dir):
    """--refit-keep better: the probe used after the refit is the re-fitted one only when its validation log-loss on
    the refit's calibration problems is lower than the probe in use's (both recorded); kept, the old probe's weights
    and τ serve the round (its calibration.json says so)."""
    from probescope.exit.calibrate import probe_fingerprint
    from probescope.exit.collect import load_collected
    from probescope.exit.selftrain import run_selftrain
    from probescope.exit.train import val_score
    from probescope.probes.base import load_probe

    run = tmp_path / "run"
    m = run_selftrain(_refit_cfg(run, probe_dir, rounds=2, refit_every=1, refit_keep="better"))
    ref = m["rounds"][1]["refit"]
    col = load_collected(run / "rounds" / "r01" / "refit" / "collect")
    used = load_probe(run / "rounds" / "r01" / "refit" / "probe")
    start = load_probe(probe_dir)
    assert ref["val_nll_current"] == pytest.approx(val_score(col, start)["val_nll"], rel=1e-6)
    if ref["val_nll_current"] <= ref["val_nll"]:
        assert ref["kept"] == "current" and probe_fingerprint(used) == probe_fingerprint(start)
        assert m["rounds"][1]["tau"] == TAU
    else:
        assert ref["kept"] == "new" and probe_fingerprint(used) != probe_fingerprint(start)
        assert m["rounds"][1]["tau"] == ref["refit_tau"]
    assert val_score(col, used)["val_nll"] == pytest.approx(min(ref["val_nll"], ref["val_nll_current"]), rel=1e-6)
