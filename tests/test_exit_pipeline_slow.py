"""Early exit in a pipeline on the real reasoner (SmolLM2-135M + shipped LoRA), at toy sizes: problems from a
user's file phrased unlike the generator, free-form answers, and HF `generate` with the EarlyExit processor equal
to probescope's own loop token for token. Savings at full size live in the benches and the README."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
MODEL = "smollm2-135m-reasoner"


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def _user_file(path, n=16):
    """Problems in the user's own words (not the generator's templates), options as text answers."""
    rng = random.Random(7)
    rows = []
    for i in range(n):
        a, b = rng.randint(3, 40), rng.randint(2, 30)
        right = a + b
        opts = [right, right + 1, right - 2, right + 10]
        rng.shuffle(opts)
        rows.append({"question": f"A shelf had {a} jars; the grocer stacked {b} more on it. Jars on the shelf now?",
                     "options": [str(o) for o in opts], "answer": str(right)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_own_problems_and_free_answers_on_the_reasoner(tmp_path):
    r = CliRunner()
    data = _user_file(tmp_path / "mine.jsonl")
    col, probe = str(tmp_path / "col"), str(tmp_path / "probe")
    out = _json(r.invoke(app, ["exit", "collect", "--model", MODEL, "--data", str(data), "--out", col,
                               "--n-train", "10", "--n-val", "3", "--n-test", "3", "--layers", "24",
                               "--max-new-tokens", "24", "--stride", "8", "--json"]))
    assert sum(v["n"] for v in out["splits"].values()) == 16
    rows = json.loads((tmp_path / "col" / "collect.json").read_text())["rows"]
    assert all("grocer" in row["prompt"] for row in rows)
    out = _json(r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "2", "--n-heads", "2",
                               "--json"]))
    assert out["chosen"] == 24

    fcol, fprobe, fev = (str(tmp_path / n) for n in ("fcol", "fprobe", "fev"))
    out = _json(r.invoke(app, ["exit", "collect", "--model", MODEL, "--answers", "free", "--out", fcol,
                               "--n-train", "8", "--n-val", "4", "--n-test", "4", "--layers", "24",
                               "--max-new-tokens", "24", "--stride", "8", "--json"]))
    meta = json.loads((tmp_path / "fcol" / "collect.json").read_text())
    assert meta["answers"] == "free" and all("(A)" not in row["prompt"] for row in meta["rows"])
    assert all(row["curve_answers"][-1] == row["final"] for row in meta["rows"])
    _json(r.invoke(app, ["exit", "train", "--collect", fcol, "--out", fprobe, "--max-epochs", "2", "--n-heads", "2",
                         "--json"]))
    out = _json(r.invoke(app, ["exit", "eval", "--collect", fcol, "--probe", fprobe, "--out", fev, "--no-live",
                               "--rule", "empirical", "--target", "0.5", "--json"]))
    assert {"probe", "forced_answer", "budget", "oracle"} <= set(out["methods"])
    assert out["methods"]["oracle"]["agreement"] == 1.0


def test_generate_with_the_processor_equals_the_own_loop_on_the_reasoner():
    from transformers import LogitsProcessorList

    from probescope import load_model
    from probescope.exit.answer import encode_prefix
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.hf import EarlyExit
    from probescope.exit.live import shipped_probe
    from probescope.exit.prompts import make_prompts
    from probescope.probes.base import load_probe
    from probescope.tasks import mcq

    model, tok = load_model(MODEL)
    probe = load_probe(shipped_probe(MODEL))
    policy = ExitPolicy(kind="probe", tau=0.9)
    stops = set()
    for p in make_prompts(mcq.generate("test", 3, seed=5), tok):
        own = generate_with_exit(model, tok, [p], probe, policy, max_new_tokens=80).rows[0]
        ids = torch.tensor([encode_prefix(tok, p)[0]])
        with EarlyExit(model, tok, probe, policy, max_new_tokens=80) as ee:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 logits_processor=LogitsProcessorList([ee]), max_new_tokens=ee.generate_budget,
                                 pad_token_id=tok.pad_token_id)
        row = ee.rows[0]
        assert row.fed_ids == own.fed_ids and row.reasoning_ids == own.reasoning_ids  # token for token
        assert (row.stop, row.answer) == (own.stop, own.answer)
        assert out[0, ids.shape[1]:].tolist()[: len(row.fed_ids)] == row.fed_ids
        stops.add(row.stop)
    assert "exit" in stops  # the shipped probe exits early on the reasoner's own problems


@pytest.mark.parametrize("name", ["smollm2-135m-reasoner-v2", MODEL])
def test_free_answers_through_generate_and_exit_run_with_the_shipped_stability_probe(tmp_path, name):
    """Each reasoner's shipped answer-stability probe on free-form problems: HF `generate` with EarlyExit (free
    answers chosen from the probe's classes) equals the own loop, and `exit run` on a question without options uses
    that probe (v2 without --model: the default reasoner)."""
    from probescope import load_model
    from probescope.exit.answer import encode_prefix
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.hf import EarlyExit
    from probescope.exit.live import shipped_probe
    from probescope.exit.prompts import make_prompts
    from probescope.probes.base import load_probe
    from probescope.tasks import mcq

    model, tok = load_model(name)
    probe = load_probe(shipped_probe(name, free=True))
    policy = ExitPolicy(kind="probe", tau=0.5)
    problems = [mcq.as_free(p) for p in mcq.generate("test", 3, seed=5, kinds=("arith",))]
    stops, right = set(), 0
    for prob, p in zip(problems, make_prompts(problems, tok)):
        own = generate_with_exit(model, tok, [p], probe, policy, max_new_tokens=120).rows[0]
        ids = torch.tensor([encode_prefix(tok, p)[0]])
        with EarlyExit(model, tok, probe, policy, max_new_tokens=120) as ee:
            assert ee.free
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, logits_processor=[ee],
                           max_new_tokens=ee.generate_budget, pad_token_id=tok.pad_token_id)
        row = ee.rows[0]
        assert (row.fed_ids, row.stop, row.answer) == (own.fed_ids, own.stop, own.answer)
        stops.add(row.stop)
        right += row.answer == str(prob.result)
    assert "exit" in stops and right >= 1  # it exits early, and the answers are numbers the model computed
    model_args = [] if name.endswith("-v2") else ["--model", name]
    out = _json(CliRunner().invoke(app, ["exit", "run", problems[0].question, *model_args, "--out",
                                         str(tmp_path / "run"), "--json"]))
    assert out["answers"] == "free" and out["probe"] == str(shipped_probe(name, free=True)) and out["answer"]


def test_the_v2_reasoner_ships_its_own_letter_probe_calibrated_on_both_family_groups(tmp_path):
    """#33 item 2's first slice: `smollm2-135m-reasoner-v2` has a letter probe of its own (named for v2, recorded
    for v2, bound to its calibration), calibrated by conformal risk control on original- and held-out-family val
    problems (the mix and the per-group figures in the file, and the drift range); `exit run --model ...-v2` finds it
    and answers with a letter."""
    from probescope.exit.calibrate import load_calibration
    from probescope.exit.live import shipped_probe
    from probescope.probes.base import load_probe

    v2 = "smollm2-135m-reasoner-v2"
    path = shipped_probe(v2)
    assert path.name == f"{v2}.probe.safetensors" and path.exists()
    probe = load_probe(path)
    assert probe.model_id == v2 and [str(c) for c in probe.classes] == ["A", "B", "C", "D"]
    cal = load_calibration(path, probe, "mcq")  # bound to this probe: fingerprint, model, answer kind
    assert cal["rule"] == "crc" and cal["mix"]["held-out"] > 0 and cal["mix"]["original"] > 0
    assert set(cal["groups"]) == {"original", "held-out"} and cal["confidence_range"]["n_checks"] > 0
    q = "Tom has 2 apples and buys 3 more. How many apples does he have?\n(A) 4\n(B) 5\n(C) 6\n(D) 1"
    out = _json(CliRunner().invoke(app, ["exit", "run", q, "--model", v2, "--max-new-tokens", "48",
                                         "--out", str(tmp_path / "run"), "--json"]))
    assert out["probe"] == str(path) and out["tau"] == pytest.approx(cal["tau"]) and out["answer"] in "ABCD"
