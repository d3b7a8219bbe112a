"""Calibration that travels (#33 item 3): τ certified by conformal risk control on val problems of both family
groups (original and held-out), the mix stated, the agreement and guarantee reported per group; and the drift check:
the calibration's confidence range, and live decoding (own loop, HF processor, `exit run`) warning once, in words,
when its check confidences leave that range."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app
from probescope.exit.calibrate import calibrate
from probescope.exit.drift import DriftWatch, ExitDriftWarning, confidence_range
from probescope.exit.generate import ExitPolicy, generate_with_exit
from probescope.exit.policy import Trace
from test_exit_hf import tiny  # noqa: F401  (the module fixture: tiny-llama, one thread)


def _one_check(i: str, conf: float, answer: str, group: str, final: str = "A") -> Trace:
    return Trace(i, "val", final, final, 100, np.array([50]), np.array([conf]), [answer], group)


def _mixed(n_orig: int = 300, n_held: int = 150, seed: int = 0) -> list[Trace]:
    """Original-family problems the probe never gets wrong; held-out ones it gets wrong below confidence 0.9."""
    rng = np.random.default_rng(seed)
    out = [_one_check(f"o{i}", rng.uniform(0.5, 1.0), "A", "original") for i in range(n_orig)]
    for i in range(n_held):
        c = rng.uniform(0.5, 1.0)
        out.append(_one_check(f"h{i}", c, "A" if c >= 0.9 else "B", "held-out"))
    return out


def test_tau_from_the_mix_with_the_guarantee_per_family_group():
    """τ is certified on the pooled problems; per group the agreement and tokens saved are the policy's replay on the
    group at that τ, the bound is conformal risk control's within the group, (k + 1) / (n + 1), and the words say
    whether the group is covered: here the held-out group disagrees more than the mix and is not."""
    traces = _mixed()
    cal = calibrate(traces, 0.99, "crc")
    assert cal.feasible and cal.risk_bound <= cal.alpha
    assert cal.mix == {"original": 300, "held-out": 150}
    assert cal.mix_text == "450 val problems: 300 original-family + 150 held-out-family"
    pol = ExitPolicy(tau=cal.tau)
    for name in ("original", "held-out"):
        sub = [t for t in traces if t.group == name]
        g, out = cal.groups[name], pol.replay_all(sub)
        k = sum(a != f for a, f in zip(out.answers, out.finals))
        assert g["n"] == len(sub) and g["agreement"] == round(out.agreement, 4) and g["disagreements"] == k
        assert g["risk_bound"] == pytest.approx((k + 1) / (len(sub) + 1), abs=1e-6)
        assert g["certified"] == (g["risk_bound"] <= cal.alpha)
        # the group's own τ: the smallest (of the candidate τ) its problems alone certify, no further than the τ a
        # calibration on the group alone finds and with its disagreements; certified exactly when τ is at or above it
        own = calibrate(sub, 0.99, "crc").tau
        assert g["own_tau"] <= own
        at_own, alone = ExitPolicy(tau=g["own_tau"]).replay_all(sub), ExitPolicy(tau=own).replay_all(sub)
        assert [a == f for a, f in zip(at_own.answers, at_own.finals)] == [a == f for a, f in zip(alone.answers,
                                                                                                   alone.finals)]
        assert g["certified"] == (cal.tau >= g["own_tau"])
    orig, held = cal.groups["original"], cal.groups["held-out"]
    assert orig["certified"] and "expected disagreement ≤ 0.01 on a new original-family problem" in orig["guarantee"]
    assert not held["certified"] and held["disagreements"] > 0
    assert "not certified for a held-out-family problem" in held["guarantee"]
    assert f"{held['disagreements']} disagreements among its 150 problems at this τ; the group alone certifies α from " \
           f"τ ≥ {held['own_tau']:.4g}" in held["guarantee"]


def test_a_small_group_is_named_too_few_and_one_group_alone_says_what_is_missing():
    cal = calibrate(_mixed(300, 40), 0.99, "crc")
    held = cal.groups["held-out"]
    assert not held["certified"]  # 40 problems cannot certify α = 0.01 on their own (conformal risk control needs 99)
    assert "40 problems are too few: rule 'crc' certifies α = 0.01 from 99" in held["guarantee"]
    only = calibrate([t for t in _mixed(120, 0)], 0.99, "crc")
    assert set(only.groups) == {"original"}
    assert "no held-out-family problems" in only.mix_text and "--n-val-held-out" in only.mix_text
    plain = calibrate([_one_check(str(i), 0.9, "A", "") for i in range(120)], 0.99, "crc")
    assert plain.groups == {} and plain.mix == {"unlabelled": 120} and plain.mix_text == "120 val problems"
    emp = calibrate(_mixed(), 0.99, "empirical")
    assert all(not g["certified"] and "no guarantee" in g["guarantee"] for g in emp.groups.values())


def test_the_confidence_range_is_that_of_the_checks_live_decoding_makes():
    """Each problem's checks up to its exit at τ (the ones live decoding sees), 5th and 95th percentiles and median."""
    rng = np.random.default_rng(1)
    traces = []
    for i in range(150):
        conf = np.sort(rng.uniform(0.2, 1.0, 6))
        traces.append(Trace(str(i), "val", "A", "A", 60, np.arange(10, 70, 10), conf, ["A"] * 6, "original"))
    cal = calibrate(traces, 0.99, "crc")
    pol = ExitPolicy(tau=cal.tau)
    seen = np.concatenate([t.conf[: pol.replay(t)[0] + 1] for t in traces])
    r = cal.confidence_range
    assert r["n_checks"] == len(seen) < 6 * 150  # the checks after an exit are never seen live
    assert r["lo"] == pytest.approx(np.percentile(seen, 5), abs=1e-6)
    assert r["hi"] == pytest.approx(np.percentile(seen, 95), abs=1e-6)
    assert r["median"] == pytest.approx(np.median(seen), abs=1e-6)
    assert confidence_range([np.zeros(0)]) is None


def test_drift_watch_warns_once_in_words():
    w = DriftWatch({"lo": 0.5, "hi": 0.9})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing before MIN_CHECKS checks, nothing while the median is inside
        for c in [0.6, 0.7, 0.95, 0.2, 0.8, 0.6, 0.7, 0.85, 0.55]:
            w.add(c)
    assert w.message is None
    low = DriftWatch((0.5, 0.9))
    with pytest.warns(ExitDriftWarning) as rec:
        for _ in range(20):
            low.add(0.3)
    assert len(rec) == 1  # once
    msg = str(rec[0].message)
    assert "median at the 8 checks so far, 0.300, is below the 5th percentile 0.500" in msg
    assert "probescope exit calibrate" in msg and "Recalibrate on problems like yours" in msg
    high = DriftWatch((0.5, 0.9))
    with pytest.warns(ExitDriftWarning, match="above the 95th percentile 0.900"):
        for _ in range(8):
            high.add(0.99)
    with pytest.raises(ValueError, match="lo and hi must be finite with lo <= hi"):
        DriftWatch((0.9, 0.5))
    with pytest.raises(ValueError, match="conf_range"):
        ExitPolicy(kind="probe", tau=0.9, conf_range="wide").validate(1)


def _prompts(tok):
    texts = ["What is 2+2?", "Hello there, how are you doing today my friend?", "Name three colours."]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


def test_live_decoding_warns_when_its_confidences_leave_the_range_and_decodes_the_same(tiny):  # noqa: F811
    """The own loop and the HF processor: a range the probe's confidences lie outside warns once (result.drift,
    EarlyExit.drift); a range they lie inside does not; the drift check never changes what is decoded."""
    from probescope.exit.hf import EarlyExit
    from test_exit import _probe

    model, tok = tiny
    probe, prompts = _probe(2, 64), _prompts(tok)
    base = ExitPolicy(kind="probe", tau=math.inf, boundary="every", every=2)
    plain = generate_with_exit(model, tok, prompts, probe, base, max_new_tokens=24)
    assert plain.drift is None
    with pytest.warns(ExitDriftWarning) as rec:
        off = generate_with_exit(model, tok, prompts, probe, ExitPolicy(**{**base.__dict__, "conf_range": (0.999, 1.0)}),
                                 max_new_tokens=24)
    assert len(rec) == 1 and off.drift == str(rec[0].message) and "below the 5th percentile 0.999" in off.drift
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExitDriftWarning)
        inside = generate_with_exit(model, tok, prompts, probe, ExitPolicy(**{**base.__dict__, "conf_range": (0.0, 1.0)}),
                                    max_new_tokens=24)
    assert inside.drift is None
    for a, b, c in zip(plain.rows, off.rows, inside.rows):
        assert a.fed_ids == b.fed_ids == c.fed_ids and a.answer == b.answer == c.answer
    from transformers import LogitsProcessorList

    from probescope.exit.answer import encode_prefix

    ids = torch.tensor([encode_prefix(tok, prompts[0])[0]])
    policy = ExitPolicy(**{**base.__dict__, "conf_range": (0.999, 1.0)})
    with pytest.warns(ExitDriftWarning), EarlyExit(model, tok, probe, policy, max_new_tokens=24) as ee:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             logits_processor=LogitsProcessorList([ee]), max_new_tokens=ee.generate_budget,
                             pad_token_id=tok.pad_token_id)
    assert ee.rows[0].fed_ids == off.rows[0].fed_ids  # the processor decodes what the own loop does
    assert out.shape[1] > ids.shape[1]
    assert ee.drift is not None and "drifted from its calibration" in ee.drift


def test_from_calibration_takes_the_rule_and_the_range():
    cal = {"tau": 0.9, "mode": "forced", "consecutive": 2, "min_tokens": 5, "answers": "mcq",
           "confidence_range": {"lo": 0.4, "hi": 0.99, "median": 0.8, "n_checks": 10}}
    p = ExitPolicy.from_calibration(cal, boundary="every", every=4)
    assert (p.kind, p.tau, p.mode, p.consecutive, p.min_tokens, p.boundary, p.every) == \
        ("probe", 0.9, "forced", 2, 5, "every", 4)
    assert p.conf_range["lo"] == 0.4
    assert ExitPolicy.from_calibration({"tau": None}).tau == math.inf  # no τ certified: never exits
    assert ExitPolicy.from_calibration({"tau": 0.5}).conf_range is None  # a file without a range: no drift check


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_collect_mixes_held_out_val_problems_and_calibrate_reports_the_groups(tmp_path):
    """The CLI chain on tiny-llama: `exit collect --n-val-held-out` adds held-out-family val problems (their rows
    say so), `exit calibrate` (CLI and Python API) states the mix and the per-group figures in calibration.json and
    its summary, and stores the range; `exit run` with a range its confidences leave warns in words."""
    from probescope.exit.calibrate import CalibrateConfig, run_calibrate
    from probescope.exit.collect import load_collected
    from probescope.tasks.mcq import is_held_out_family

    r = CliRunner()
    col, probe = str(tmp_path / "col"), str(tmp_path / "probe")
    out = _json(r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--out", col, "--n-train", "8", "--n-val",
                               "6", "--n-val-held-out", "5", "--n-test", "4", "--n-test-held-out", "3", "--layers", "1",
                               "--max-new-tokens", "8",
                               "--batch-size", "8", "--json"]))
    assert out["splits"]["val"]["n"] == 11 and out["splits"]["val"]["groups"] == {"original": 6, "held-out": 5}
    assert "val with 5 held-out-family problems besides, test with 3 held-out-family problems besides" in out["problems"]
    assert out["splits"]["test"]["groups"] == {"original": 4, "held-out": 3}
    rows = load_collected(col).rows
    held = [x for x in rows if x["group"] == "held-out"]
    assert [x["split"] for x in held] == ["val"] * 5 + ["test"] * 3 and all(is_held_out_family(x["family"]) for x in held)
    assert all(not is_held_out_family(x["family"]) for x in rows if x["group"] == "original")
    assert len({x["id"] for x in rows}) == len(rows)
    _json(r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "2", "--n-heads", "2",
                         "--json"]))
    res = r.invoke(app, ["exit", "calibrate", "--collect", col, "--probe", probe, "--rule", "crc", "--target", "0.5"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "calibrated on 11 val problems: 6 original-family + 5 held-out-family" in text
    assert "original: 6 problems, agreement" in text and "held-out: 5 problems, agreement" in text
    assert "drift check: live decoding warns when the median probe confidence" in text
    d = json.loads((tmp_path / "probe" / "calibration.json").read_text())
    assert d["mix"] == {"original": 6, "held-out": 5} and set(d["groups"]) == {"original", "held-out"}
    assert d["confidence_range"]["lo"] <= d["confidence_range"]["median"] <= d["confidence_range"]["hi"]
    api = run_calibrate(CalibrateConfig(collect=col, probe=probe, rule="crc", target_agreement=0.5))
    assert api["groups"] == d["groups"] and api["mix_text"] == d["mix_text"]
    ev = r.invoke(app, ["exit", "eval", "--collect", col, "--probe", probe, "--out", str(tmp_path / "eval"), "--no-live",
                        "--rule", "crc", "--target", "0.5", "--json"])
    m = _json(ev)
    assert {g: x["n"] for g, x in m["by_group"].items()} == {"original": 4, "held-out": 3}
    assert m["calibration"]["probe"]["mix"] == {"original": 6, "held-out": 5}
    for x in m["by_group"].values():
        assert set(x) == {"n", "model_accuracy", "oracle_tokens_saved", "probe", "forced_answer"}
        assert 0 <= x["probe"]["agreement"] <= 1 and len(x["probe"]["agreement_ci95"]) == 2

    d["confidence_range"].update(lo=0.999, hi=1.0)  # a range tiny-llama's probe never reaches: the run drifts
    (tmp_path / "probe" / "calibration.json").write_text(json.dumps(d))
    q = "Tom has 2 apples and buys 3 more. How many apples does he have?\n(A) 4\n(B) 5\n(C) 6\n(D) 1"
    res = r.invoke(app, ["exit", "run", q, "--model", "tiny-llama", "--probe", probe, "--tau", "1.0", "--boundary",
                         "every:2", "--max-new-tokens", "24", "--out", str(tmp_path / "run"), "--json"])
    m = _json(res)
    assert "drifted from its calibration" in m["drift"]
    flat = " ".join(res.output.split())
    assert "Warning: the probe's confidence has drifted" in flat and "probescope exit calibrate" in flat


def test_held_out_val_problems_with_your_own_file_are_refused(tmp_path):
    from probescope.exit.collect import CollectConfig

    with pytest.raises(ValueError, match=r"--n-test-held-out 2 adds generated held-out-family problems, but with "
                                         r"--data the test problems are your file's"):
        CollectConfig(data=str(tmp_path / "p.jsonl"), n_test_held_out=2)

    with pytest.raises(ValueError, match=r"--n-val-held-out 5 adds generated held-out-family problems, but with "
                                         r"--data the val problems are your file's"):
        CollectConfig(data=str(tmp_path / "p.jsonl"), n_val_held_out=5)
    with pytest.raises(ValueError, match=r"--n-val-held-out -1 is out of range"):
        CollectConfig(n_val_held_out=-1)


def test_collects_of_two_seeds_merge_into_one(tmp_path):
    """More problems for training and calibration from several runs: rows in order, each row's activations as
    collected (padding aside), the sources named; runs that share a problem or differ in layers are refused."""
    from probescope.exit.collect import load_collected, merge_collected

    r = CliRunner()
    for seed in (0, 1):
        _json(r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--out", str(tmp_path / f"c{seed}"), "--seed",
                             str(seed), "--n-train", "8", "--n-val", "3", "--n-val-held-out", "2", "--n-test", "0",
                             "--layers", "1", "--max-new-tokens", "6", "--json"]))
    a, b = load_collected(tmp_path / "c0"), load_collected(tmp_path / "c1")
    m = merge_collected([tmp_path / "c0", tmp_path / "c1"], tmp_path / "m")
    assert [x["id"] for x in m.rows] == [x["id"] for x in a.rows + b.rows]
    assert m.meta["merged_from"] == [str(tmp_path / "c0"), str(tmp_path / "c1")]
    assert len(m.split("val")) == 10 and len(m.split("train")) == 16
    for k, (src, i) in enumerate([(a, i) for i in range(len(a.rows))] + [(b, i) for i in range(len(b.rows))]):
        n = int(src.lengths[i])
        assert int(m.lengths[k]) == n and torch.equal(m.acts[1][k, :n], src.acts[1][i, :n])
    with pytest.raises(ValueError, match="is in more than one run"):
        merge_collected([tmp_path / "c0", tmp_path / "c0"], tmp_path / "dup")
    _json(r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--out", str(tmp_path / "c2"), "--seed", "2",
                         "--n-train", "8", "--n-val", "1", "--n-test", "0", "--layers", "2", "--max-new-tokens", "4",
                         "--json"]))
    with pytest.raises(ValueError, match="differs from .* in layers"):
        merge_collected([tmp_path / "c0", tmp_path / "c2"], tmp_path / "bad")
