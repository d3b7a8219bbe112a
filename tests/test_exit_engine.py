"""The exit wing's one engine (#33 item 1): the house rules of the wing read with `ast` (no function takes more than
8 positional parameters; no private function imported or called across files), the policy's offline replay equal
to live decoding, calibration files bound to their probe, and a run without calibration refused."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

WING = Path(__file__).resolve().parents[1] / "src" / "probescope" / "exit"
MAX_POSITIONAL = 8


def positional_counts(tree: ast.AST) -> list[tuple[int, str, int]]:
    """(line, name, positional parameters) of every function; a method's self/cls is not counted."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            params = [a.arg for a in [*n.args.posonlyargs, *n.args.args]]
            if params and params[0] in ("self", "cls"):
                params = params[1:]
            out.append((n.lineno, getattr(n, "name", "<lambda>"), len(params)))
    return out


def private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every private name (one leading underscore, not a dunder) taken from another file: imported
    (`from .x import _f`, also under another name), or reached as an attribute (`x._f`, `obj._f(...)`) of anything
    but `self`/`cls` when this file does not define that name itself."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    own |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            out += [(n.lineno, a.name) for a in n.names if private(a.name)]
        elif isinstance(n, ast.Attribute) and private(n.attr) and n.attr not in own:
            if not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
                out.append((n.lineno, n.attr))
    return out


def _wing():
    files = sorted(WING.glob("*.py"))
    assert len(files) >= 12, f"the walk found only {len(files)} files in {WING}"
    return [(f, ast.parse(f.read_text(), filename=str(f))) for f in files]


def test_no_exit_function_takes_more_than_eight_positional_parameters():
    found = [f"{f.name}:{line} {name} ({k})" for f, tree in _wing() for line, name, k in positional_counts(tree)
             if k > MAX_POSITIONAL]
    assert not found, "functions of the exit wing with more than 8 positional parameters (options belong in the " \
                      "policy or a config object; make the rest keyword-only): " + "; ".join(found)


def test_no_private_function_used_across_files_of_the_wing():
    found = [f"{f.name}:{line} {name}" for f, tree in _wing() for line, name in private_uses(tree)]
    assert not found, "private names taken from another module (make them public, or keep the caller in their " \
                      "file): " + "; ".join(found)


def test_the_rule_checks_catch_what_they_look_for():
    src = ("from .generate import _decide, ExitPolicy\nfrom .hf import _force as force\nimport numpy as np\n"
           "from . import generate\nfrom ..core import io\n"
           "def f(a, b, c, d, e, f, g, h, i, *, j=1):\n    generate._run_batch(1)\n    io.x._atomic()\n"
           "    self._own()\n    np.__name__\n    dec._decide(1)\n    st._mine = 1\n    st._mine\n"
           "class C:\n    def m(self, a, b, c, d, e, f, g, h):\n        return _local(a)\n"
           "    @classmethod\n    def k(cls, a, b, c, d, e, f, g, h, i):\n        return None\n")
    tree = ast.parse(src)
    assert sorted(private_uses(tree)) == [(1, "_decide"), (2, "_force"), (7, "_run_batch"), (8, "_atomic"),
                                          (11, "_decide")]
    assert [(name, k) for _, name, k in positional_counts(tree) if k > MAX_POSITIONAL] == [("f", 9), ("k", 9)]


# ------------------------------------------------------------------------------------ one engine, offline = live
from test_exit_hf import tiny  # noqa: E402, F401  (the module fixture: tiny-llama, one thread)


def _prompts(tok):
    texts = ["What is 2+2?", "Hello there, how are you doing today my friend?", "Name three colours."]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


def _midway_taus(conf: np.ndarray) -> list[float]:
    """Thresholds halfway between distinct confidences (no ties between the replayed and the live value)."""
    u = np.unique(conf)
    return [float((a + b) / 2) for a, b in zip(u[:-1], u[1:])]


@pytest.mark.parametrize("boundary,every,consecutive,min_tokens,mode", [
    ("every", 3, 1, 0, "probe"), ("every", 2, 2, 4, "forced"), ("newline", 8, 1, 2, "probe"),
])
def test_offline_replay_of_the_policy_equals_live_decoding(tiny, boundary, every, consecutive, min_tokens, mode):
    """The policy replayed over the trace of a full run (its checks, the probe's probabilities there) exits at the
    same step as live decoding with that policy: the same cut, the same stop, and in mode "probe" the same answer.
    Several τ per prompt (halfway between the confidences seen, so no float tie decides), all exact."""
    from probescope.exit.collect import live_trace
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from test_exit import _probe

    model, tok = tiny
    probe = _probe(2, 64)
    compared = fired = 0
    for prompt in _prompts(tok):
        base = ExitPolicy(kind="probe", tau=math.inf, boundary=boundary, every=every, consecutive=consecutive,
                          min_tokens=min_tokens, mode=mode)
        full = generate_with_exit(model, tok, [prompt], probe, base, max_new_tokens=24).rows[0]
        trace = live_trace(full, base, tok)
        assert len(trace.cuts) == full.checks >= 2 and trace.full == full.cut  # the checks a live run makes
        for tau in _midway_taus(trace.conf)[::2]:
            policy = base.with_tau(tau)
            k, cut, answer = policy.replay(trace)
            live = generate_with_exit(model, tok, [prompt], probe, policy, max_new_tokens=24).rows[0]
            compared += 1
            if k < len(trace.conf):
                fired += 1
                assert (live.stop, live.cut, live.checks) == ("exit", cut, k + 1), (tau, k)
                if mode == "probe":
                    assert live.answer == answer
            else:
                assert live.stop != "exit" and live.cut == trace.full
    assert compared >= 4 and fired >= 2


def test_the_policy_owns_its_rule():
    from probescope.exit.calibrate import Trace, simulate
    from probescope.exit.generate import ExitPolicy

    t = Trace("p", "val", "A", "A", 50, np.array([5, 10, 20, 30, 40]), np.array([0.2, 0.95, 0.5, 0.96, 0.97]),
              ["B", "C", "B", "A", "A"])
    assert ExitPolicy(tau=0.9).replay(t) == (1, 10, "C")
    assert ExitPolicy(tau=0.9, consecutive=2).replay(t) == (4, 40, "A")
    assert ExitPolicy(tau=0.9, min_tokens=15).replay(t) == (3, 30, "A")
    assert ExitPolicy(tau=0.99).replay(t) == (5, 50, "A")  # never fires: full reasoning's answer
    # many τ at once (calibration) is the same rule
    taus = np.array([0.1, 0.9, 0.955, 0.99])
    assert ExitPolicy(tau=0.0).first_exit(t.conf, t.cuts, taus).tolist() == [0, 1, 3, 5]
    out = simulate([t], 0.9, consecutive=2)
    assert out.cuts.tolist() == [40] and out.answers == ["A"]
    with pytest.raises(TypeError):
        ExitPolicy(threshold=0.9)  # one name: tau
    with pytest.raises(ValueError, match="tau=nan"):
        ExitPolicy(tau=float("nan")).validate(1)


def test_a_probe_policy_without_tau_is_refused(tiny):
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.hf import EarlyExit
    from test_exit import _probe

    model, tok = tiny
    with pytest.raises(ValueError, match="needs tau.*probescope exit calibrate"):
        generate_with_exit(model, tok, _prompts(tok)[:1], _probe(2, 64), ExitPolicy(kind="probe"), max_new_tokens=2)
    with pytest.raises(ValueError, match="needs tau"):
        EarlyExit(model, tok, _probe(2, 64), ExitPolicy(kind="probe"))


def test_a_probe_of_another_model_is_refused(tiny):
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.hf import EarlyExit
    from test_exit import _probe

    model, tok = tiny
    probe = _probe(2, 64)
    probe.model_id = "smollm2-135m-reasoner"
    pol = ExitPolicy(kind="probe", tau=0.9)
    with pytest.raises(ValueError, match="trained on model 'smollm2-135m-reasoner', not 'tiny-llama'.*"
                                         "allow_other_model=True"):
        generate_with_exit(model, tok, _prompts(tok)[:1], probe, pol, max_new_tokens=2)
    with pytest.raises(ValueError, match="trained on model 'smollm2-135m-reasoner'"):
        EarlyExit(model, tok, probe, pol)
    res = generate_with_exit(model, tok, _prompts(tok)[:1], probe, pol, max_new_tokens=2, allow_other_model=True)
    assert len(res.rows) == 1
    EarlyExit(model, tok, probe, pol, allow_other_model=True).close()


def test_policy_answers_kind_must_match(tiny):
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from test_exit import _probe

    model, tok = tiny
    with pytest.raises(ValueError, match="answers='free'.*answers='mcq'"):
        generate_with_exit(model, tok, _prompts(tok)[:1], _probe(2, 64), ExitPolicy(kind="never", answers="free"),
                           max_new_tokens=2, answers="mcq")
    with pytest.raises(ValueError, match="answers 'text' is unknown"):
        ExitPolicy(kind="never", answers="text").validate(1)


# ------------------------------------------------------------------------------------------------- calibration
def _saved_probe(tmp_path, name="probe"):
    from test_exit import _probe

    p = _probe(2, 64)
    p.save(tmp_path / name)
    return tmp_path / name


def test_calibration_files_are_bound_to_their_probe(tmp_path):
    from probescope.exit.calibrate import calibration_path, load_calibration, probe_fingerprint
    from probescope.probes.base import load_probe
    from test_exit import _probe

    path = _saved_probe(tmp_path)
    probe = load_probe(path)
    cal = calibration_path(path)
    assert cal == path / "calibration.json"
    assert calibration_path(tmp_path / "x.probe.safetensors") == tmp_path / "x.calibration.json"
    with pytest.raises(ValueError, match=r"calibration\.json does not exist.*probescope exit calibrate --collect "
                                         r"COLLECT --probe .*--tau"):
        load_calibration(path, probe)
    cal.write_text(json.dumps({"tau": 0.8, "mode": "probe", "probe_sha256": probe_fingerprint(probe)}))
    assert load_calibration(path, probe)["tau"] == 0.8
    other = _probe(2, 64, seed=1)
    with pytest.raises(ValueError, match="made for another probe.*probescope exit calibrate"):
        load_calibration(path, other)
    cal.write_text(json.dumps({"threshold": 0.7, "mode": "probe"}))  # an old file: tau was once saved as threshold
    assert load_calibration(path, probe)["tau"] == 0.7
    cal.write_text(json.dumps({"tau": None, "mode": "probe"}))  # calibration found no τ: never exit, said so
    assert load_calibration(path, probe)["tau"] == math.inf
    cal.write_text(json.dumps({"tau": 0.9, "mode": "forced", "answers": "free"}))
    with pytest.raises(ValueError, match="free-form answers.*option letters"):
        load_calibration(path, probe)
    cal.write_text(json.dumps({"tau": 0.9, "model_id": "gemma3-270m"}))
    with pytest.raises(ValueError, match="gemma3-270m"):
        load_calibration(path, probe)


def test_the_shipped_calibrations_name_their_probes():
    """Both reasoners ship a letter probe and a free-form (answer-stability) probe, each with a calibration bound to
    it; v2's letter τ is certified on val problems of both family groups (the mix and each group's guarantee)."""
    from probescope.exit.calibrate import load_calibration
    from probescope.exit.live import shipped_probe
    from probescope.probes.base import load_probe

    for model in ("smollm2-135m-reasoner-v2", "smollm2-135m-reasoner"):
        for free in (False, True):
            path = shipped_probe(model, free)
            probe = load_probe(path)
            cal = load_calibration(path, probe)
            assert 0 < cal["tau"] < 1 and "probe_sha256" in cal and cal["answers"] == ("free" if free else "mcq")
            assert probe.model_id == model and cal["model_id"] == model
            if model.endswith("-v2"):
                assert set(cal["mix"]) == {"original", "held-out"} and min(cal["mix"].values()) >= 40
                assert set(cal["groups"]) == {"original", "held-out"} and all(
                    "guarantee" in g for g in cal["groups"].values())


def test_the_default_reasoner_is_v2_and_the_old_one_stays_loadable_by_name():
    """#33 item 2: `exit run`, `exit collect`, `exit selftrain` and the demo default to smollm2-135m-reasoner-v2;
    smollm2-135m-reasoner is still registered and has its probes; the demo's problems are half held-out-family."""
    from probescope.core.models.registry import BUILTIN
    from probescope.exit.collect import CollectConfig
    from probescope.exit.demo import MODEL, REASONERS, demo_problems, shipped_available
    from probescope.exit.live import RunConfig
    from probescope.exit.selftrain import SelfTrainConfig

    v2 = "smollm2-135m-reasoner-v2"
    assert MODEL == v2 and REASONERS == (v2, "smollm2-135m-reasoner")
    assert RunConfig("What is 2 + 2?").model == CollectConfig().model == SelfTrainConfig().model == v2
    assert all(name in BUILTIN and shipped_available(name) for name in REASONERS)
    probs = demo_problems(8)
    assert len(probs) == 8 and [p.held_out for p in probs] == [False, True] * 4


def test_exit_run_without_calibration_is_an_error_naming_the_file(tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    path = _saved_probe(tmp_path)
    res = CliRunner().invoke(app, ["exit", "run", "What is 2+2? (A) 3 (B) 4 (C) 5 (D) 6", "--model", "tiny-llama",
                                   "--probe", str(path), "--out", str(tmp_path / "run")])
    flat = " ".join(res.output.split())
    assert res.exit_code == 2 and "calibration.json does not exist" in flat and "--tau" in flat, res.output
    assert "exit calibrate" in flat and not (tmp_path / "run").exists()


def test_calibrate_and_eval_refuse_a_probe_of_another_kind_or_model(tmp_path):
    from probescope.exit.calibrate import CalibrateConfig, run_calibrate
    from probescope.exit.collect import Collected, check_probe_fits

    col = Collected([], {}, torch.zeros(0), {"model": "tiny-llama", "model_id": "tiny-llama", "answers": "free"})
    from test_exit import _probe

    with pytest.raises(ValueError, match="free-form answers.*option letters.*--answers free"):
        check_probe_fits(col, _probe(2, 64))
    col.meta["answers"] = "mcq"
    p = _probe(2, 64)
    p.model_id = "smollm2-135m"
    with pytest.raises(ValueError, match="trained on model 'smollm2-135m'.*--allow-other-model"):
        check_probe_fits(col, p)
    check_probe_fits(col, p, allow_other_model=True)
    with pytest.raises(FileNotFoundError, match="collect"):
        run_calibrate(CalibrateConfig(collect=str(tmp_path / "none"), probe=str(_saved_probe(tmp_path))))


def test_a_question_with_three_options_is_read_over_those_three(tiny):
    """letters=("A", "B", "C") with a probe of classes A-D (#37): the probe's belief after every token is its
    four-class belief restricted to A-C and renormalised (1e-6), the forced answer is the softmax over the three
    letters' logits (= the four-letter probabilities renormalised, 1e-5), and the probe's own answer is one of
    A-C; a letter the probe does not have is still refused."""
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.hf import EarlyExit
    from test_exit import _probe

    model, tok = tiny
    probe, prompts = _probe(2, 64), _prompts(tok)
    never = ExitPolicy(kind="probe", tau=math.inf, boundary="every", every=2, mode="forced")
    four = generate_with_exit(model, tok, prompts, probe, never, max_new_tokens=12).rows
    three = generate_with_exit(model, tok, prompts, probe, never, max_new_tokens=12, letters=("A", "B", "C")).rows
    for r4, r3 in zip(four, three):
        assert r3.fed_ids == r4.fed_ids and r3.probe_trace.shape[1] == 3
        want = r4.probe_trace[:, :3] / r4.probe_trace[:, :3].sum(-1, keepdim=True)
        assert (r3.probe_trace - want).abs().max().item() <= 1e-6
        p4 = torch.tensor(r4.answer_probs[:3])
        assert (torch.tensor(r3.answer_probs) - p4 / p4.sum()).abs().max().item() <= 1e-5
        assert r3.answer in "ABC" and len(r3.answer_probs) == 3
    fires = ExitPolicy(kind="probe", tau=0.0, boundary="every", every=2, mode="probe")
    rows = generate_with_exit(model, tok, prompts, probe, fires, max_new_tokens=12, letters=("A", "B", "C")).rows
    assert all(r.stop == "exit" and r.answer in "ABC" and len(r.answer_probs) == 3 for r in rows)
    ee = EarlyExit(model, tok, probe, fires, letters=("A", "B", "C"))
    assert ee.dec.option_index == [0, 1, 2]
    ee.close()
    with pytest.raises(ValueError, match=r"classes .* are not \['A', 'E'\]"):
        generate_with_exit(model, tok, prompts[:1], probe, never, max_new_tokens=2, letters=("A", "E"))


def test_exit_run_reads_the_options_the_question_lists():
    """`exit run`'s option letters are the question's (A), (B), ... up to the first missing one; a gap ((D) without
    (C)) and a fifth option are refused at the door, naming the letter or the count and the fix."""
    from probescope.exit.live import RunConfig, option_letters

    assert option_letters("Which? (A) 1 (B) 2 (C) 3") == ("A", "B", "C")
    assert option_letters("Which? (A) 1 (B) 2 (D) 3") == ("A", "B")
    with pytest.raises(ValueError, match=r"lists option \(D\) but not every letter before it"):
        RunConfig("Which? (A) 1 (B) 2 (D) 3")
    with pytest.raises(ValueError, match=r"lists 5 options, \(A\) to \(E\).*letters A-D: give at most 4 options"):
        RunConfig("Which? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5")


def test_exit_run_says_its_result_in_one_sentence():
    """#36 item 3: the summary is one sentence after the live view's τ line (not glued to it): what was asked,
    where it stopped, the tokens saved when the full reasoning was run, the answer and the probe's belief."""
    from probescope.exit.live import run_summary

    base = {"question": "Which number\nis largest? (A) 1 (B) 2 (C) 3", "answers": "mcq", "tau": 0.96651,
            "mode": "probe", "stop": "exit", "reasoning_tokens": 42, "answer": "B", "probe_overhead": 0.0031,
            "belief": {"A": 0.01, "B": 0.97, "C": 0.02}}
    assert run_summary(base, 160) == (
        "Asked “Which number is largest? (A) 1 (B) 2 (C) 3”: the probe stopped the reasoning after 42 tokens "
        "(τ = 0.967); the full reasoning was not run (--compare-full measures the tokens saved). Answer (B) (the "
        "probe's own answer); the probe's belief A 0.01, B 0.97, C 0.02; probe overhead 0.3%.")
    full = {**base, "full_reasoning_tokens": 97, "tokens_saved": 55, "full_answer": "C", "full_answer_agrees": False}
    assert ", saving 55 of the full reasoning's 97 tokens (57%), whose answer (C) is NOT the same." in \
        run_summary(full, 160)
    never = {**base, "stop": "max_tokens", "reasoning_tokens": 160, "mode": "forced", "tau": None}
    assert run_summary(never, 160).startswith(
        "Asked “Which number is largest? (A) 1 (B) 2 (C) 3”: it reasoned in full, 160 tokens (the 160-token budget "
        "ran out): the probe never reached τ = ∞ (never exits) at a check, 0 tokens saved. Answer (B) (the model's "
        "answer after its reasoning)")
    free = {**base, "answers": "free", "answer": "5", "mode": "forced", "belief": {"changes": 0.1, "stable": 0.9}}
    assert "Answer '5' (the model's forced answer at the cut); the probe's P(stable) 0.90;" in run_summary(free, 160)


def test_exit_run_on_the_terminal_and_compare_full(tmp_path):
    """On the CLI (not quiet): the τ line ends before the summary; --compare-full's saving is the full run's
    reasoning tokens minus the exit's, and its answer the full run's (`exit run` with τ = 1, which never exits)."""
    from typer.testing import CliRunner

    from probescope.cli import app
    from probescope.core.io import read_json
    from test_exit import _probe

    probe = _probe(2, 64)
    probe.save(tmp_path / "probe")
    q = "Which number is largest?\n(A) 1\n(B) 2\n(C) 3\n(D) 4"
    args = ["exit", "run", q, "--model", "tiny-llama", "--probe", str(tmp_path / "probe"), "--max-new-tokens", "16"]
    res = CliRunner().invoke(app, [*args, "--tau", "0", "--out", str(tmp_path / "a"), "--compare-full"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    tau_line = [i for i, line in enumerate(lines) if line.startswith("τ = 0")][-1]
    assert lines[tau_line] == "τ = 0" and lines[tau_line + 1].startswith("Asked “Which number is largest?")
    m = read_json(tmp_path / "a" / "metrics.json")
    res = CliRunner().invoke(app, [*args, "--tau", "1", "--out", str(tmp_path / "b"), "--quiet"])
    assert res.exit_code == 0, res.output
    f = read_json(tmp_path / "b" / "metrics.json")
    assert m["stop"] == "exit" and f["stop"] != "exit"
    assert m["full_reasoning_tokens"] == f["reasoning_tokens"] and m["full_answer"] == f["answer"]
    assert m["tokens_saved"] == f["reasoning_tokens"] - m["reasoning_tokens"]
    assert f"saving {m['tokens_saved']} of the full reasoning's {f['reasoning_tokens']} tokens" in m["summary"]
