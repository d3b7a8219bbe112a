"""Values checked at the door (core/checks.py, run by clikit for every job command) and the one error handler's
line between bad input and a bug of ours."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from probescope.clikit import COMMANDS, _option_fields, config_command, run_job
from probescope.core.checks import _rule, check_field, check_values
from probescope.core.options import option


@dataclass
class _Inner:
    lr: float = option(1e-3, "learning rate")  # a NAMED rule: > 0


@dataclass
class _Cfg:
    inner: _Inner = field(default_factory=_Inner)
    scale: float = option(1.0, "scale")  # no rule: finite only
    tau: float = option(-1.0, "threshold", min=0, max=1, also=(-1.0,))
    shots: int = option(5, "shots", min=1)
    widths: list[float] = option(lambda: [1.0, 2.0], "widths", gt=0)
    strengths: str = option("-1,0,1", "strengths", csv=True)
    mode: str = option("add", "mode", choices=("add", "ablate"))


def test_defaults_pass_and_each_rule_refuses_by_name():
    check_values(_Cfg())
    cases = [
        (dict(scale=math.nan), "--scale nan: nan is not a finite number"),
        (dict(scale=math.inf), "--scale inf"),
        (dict(tau=1.5), "--tau 1.5 is out of range: it must be between 0 and 1 (or -1.0)"),
        (dict(tau=math.nan), "--tau nan"),
        (dict(shots=0), "--shots 0 is out of range: it must be ≥ 1"),
        (dict(widths=[1.0, -2.0]), "--widths 1.0,-2.0 (the value -2.0) is out of range: it must be > 0"),
        (dict(strengths="0,1,inf"), "--strengths '0,1,inf': inf is not a finite number"),
        (dict(mode="scale"), "--mode 'scale' is not one of add, ablate"),
        (dict(inner=_Inner(lr=-1.0)), "--lr -1.0 is out of range: it must be > 0 (learning rate)"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError) as e:
            check_values(_Cfg(**kw))
        assert msg in str(e.value), (kw, str(e.value))
    check_values(_Cfg(tau=-1.0))  # the sentinel is accepted
    check_values(_Cfg(tau=0.0, strengths="not numbers"))  # a string that is not numbers is its parser's business


def test_every_command_default_passes_its_own_checks():
    """The declared rules never refuse a command's own defaults (a rule that did would break the command)."""
    import probescope.cli  # noqa: F401  (registers every command)

    assert len(COMMANDS) >= 20, sorted(COMMANDS)
    for name, cls in COMMANDS.items():
        for path, f, _typ, default in _option_fields(cls):
            if default is ...:
                continue
            rule = _rule(f)
            if rule.get("nonempty") and default in ("", None, []):
                continue  # a required option: its empty default is refused by design, naming the fix
            check_field(f.name, default, rule)


def _one_command(fn):
    app = typer.Typer()
    config_command(app, "job", _Cfg, fn)

    @app.command("other")
    def _other() -> None:  # a second command keeps typer from folding the app into "job"
        pass

    return app


def test_cli_refuses_before_the_job_runs(tmp_path):
    ran = []
    app = _one_command(lambda cfg: ran.append(cfg) or {})
    res = CliRunner().invoke(app, ["job", "--tau", "1.5"])
    assert res.exit_code == 2 and "--tau 1.5 is out of range" in res.output and not ran
    res = CliRunner().invoke(app, ["job", "--lr", "-1"])
    assert res.exit_code == 2 and "--lr -1.0 is out of range: it must be > 0" in res.output and not ran
    res = CliRunner().invoke(app, ["job", "--json"])
    assert res.exit_code == 0 and len(ran) == 1


def test_a_bug_is_not_called_bad_input(monkeypatch):
    """A TypeError/KeyError raised by an expression (not by a `raise` of ours) is a bug: said so, exit code 1, the
    traceback with --debug / PROBESCOPE_DEBUG=1. A message we raise on purpose stays one red line, exit code 2."""
    def bug(cfg):
        return {"x": None + 1}

    def bad(cfg):
        from probescope import load_model
        from probescope.core.sites import check_layers

        check_layers(load_model("tiny-llama")[0], ["x"])  # raises TypeError("layer 'x' is not an int") on purpose

    monkeypatch.setenv("PROBESCOPE_DEBUG", "0")
    res = CliRunner().invoke(_one_command(bug), ["job"])
    assert res.exit_code == 1 and "internal error" in res.output and "bug in probescope" in res.output
    assert "--debug" in res.output
    res = CliRunner().invoke(_one_command(bad), ["job"])
    assert res.exit_code == 2 and "error: layer 'x' is not an int" in res.output and "bug" not in res.output
    monkeypatch.setenv("PROBESCOPE_DEBUG", "1")
    res = CliRunner().invoke(_one_command(bug), ["job"])
    assert isinstance(res.exception, TypeError)  # the traceback, not a line
    with pytest.raises(KeyError):
        run_job(lambda: {}["missing"])


def test_root_debug_flag_sets_the_environment(monkeypatch):
    from probescope.cli import app

    monkeypatch.setenv("PROBESCOPE_DEBUG", "0")  # recorded, so the flag's "1" is undone after the test
    res = CliRunner().invoke(app, ["--debug", "models"])
    assert res.exit_code == 0
    import os

    assert os.environ.get("PROBESCOPE_DEBUG") == "1"


@pytest.mark.parametrize("argv, msg", [
    (["probe", "train", "--lr", "-1"], "--lr -1.0 is out of range: it must be > 0"),
    (["steer", "apply", "--vector", "v", "--prompt", "hi", "--multiplier", "nan"],
     "--multiplier nan: nan is not a finite number"),
    (["steer", "icl", "--strengths", "0,1,inf"], "--strengths '0,1,inf': inf is not a finite number"),
    (["steer", "icl", "--vector-shots", "0"], "--vector-shots 0 is out of range: it must be ≥ 1"),
    (["unlearn", "run", "--alpha", "-5"], "--alpha -5.0 is out of range: it must be ≥ 0"),
    (["exit", "run", "2+2?", "--tau", "1.5"], "--tau 1.5 is out of range: it must be between 0 and 1 (or -1.0)"),
    (["exit", "run", "2+2?", "--tau", "nan"], "--tau nan"),
    (["curvature", "organism", "--steps", "0"], "--steps 0 is out of range: it must be ≥ 1"),
    (["curvature", "organism", "--lr", "-1"], "--lr -1.0 is out of range: it must be > 0"),
])
def test_fault_cases_refused_at_the_door(tmp_path, argv, msg):
    """The issue's silent-wrong cases: refused before any model is loaded, and nothing is written at --out."""
    from probescope.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [*argv, "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    assert msg in " ".join(res.output.split()), res.output
    assert not out.exists()


def test_layer_specs_are_never_wrapped():
    """`curvature fit --layers 9` on a 4-layer model fitted layer 1 (indices wrapped); `2-9` gave no matrices."""
    from probescope import load_model
    from probescope.core.layers import layer_spec
    from probescope.curvature.organism import _layers
    from probescope.curvature.targets import mlp_matrices

    assert layer_spec("22-29", 30) == list(range(22, 30)) and layer_spec("-8--1", 30) == list(range(22, 30))
    assert layer_spec("3,5,3", 30) == [3, 5] and layer_spec("-1", 4) == [3]
    for spec, msg in [("9", "layer 9 is out of range: this model has 4 layers"), ("2,9", "layer 9 is out of range"),
                      ("2-9", "layer 9 is out of range"), ("-5", "layer -5 is out of range"),
                      ("3-1", "runs backwards"), ("a-b", "write a range like 22-29"), ("", "no layer given")]:
        with pytest.raises(ValueError, match=msg):
            layer_spec(spec, 4)
    model, _ = load_model("tiny-llama")
    assert _layers(model, "1-2") == [1, 2]
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        _layers(model, "2-9")
    assert mlp_matrices(model, "-1", "down") == ["mlp.3.down_proj"]
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        mlp_matrices(model, "9", "down")


def test_readers_name_file_line_and_byte(tmp_path):
    """#37 item 4: a byte that is not UTF-8 is named by file, line and byte offset (JSONL, CSV, text); a field over
    the limit is refused by name (JSONL, CSV) instead of a tokenizer allocating terabytes or csv's own limit."""
    from probescope.core.data.readers import MAX_FIELD, read_records, read_texts

    j = tmp_path / "d.jsonl"
    j.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: byte 28 \(0xe9\) is not UTF-8"):
        read_texts(j)
    c = tmp_path / "d.csv"
    c.write_bytes(b"text\nok\nna\xefve\n")
    with pytest.raises(ValueError, match=r"d.csv:3: byte 10 \(0xef\) is not UTF-8"):
        read_texts(c)
    t = tmp_path / "d.txt"
    t.write_bytes(b"one\n\ntwo \xff\n")
    with pytest.raises(ValueError, match=r"d.txt:3: byte 9 \(0xff\) is not UTF-8"):
        read_texts(t)
    big = "x" * (MAX_FIELD + 1)
    j.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": big}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:2: field 'text' holds 1,000,001 characters, over the limit"):
        read_records(j)
    c.write_text("text\nok\n" + big + "\n")
    with pytest.raises(ValueError, match=r"d.csv:3: a field is over the limit of 1,000,000 characters"):
        read_texts(c)
    c.write_text("text,label\nfine,1\n")
    assert read_records(c) == [{"text": "fine", "label": "1"}] and read_texts(c) == ["fine"]


def _snapshot(folder) -> dict:
    from pathlib import Path

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_steer_make_refuses_other_settings_before_writing(tmp_path):
    """#37 data lost: `steer make --out DIR` over a vector made with other settings replaced the vector and run.json
    before refusing. Now the folder is byte-identical after the refusal (run.json's start time included)."""
    from probescope.cli import app

    v = str(tmp_path / "v")
    r = CliRunner()
    base = ["steer", "make", "--model", "tiny-llama", "--layers", "1", "--out", v, "--quiet"]
    assert r.invoke(app, [*base, "--n-pairs", "2"]).exit_code == 0
    before = _snapshot(v)
    res = r.invoke(app, [*base, "--n-pairs", "3"])
    assert res.exit_code == 2 and "other settings" in res.output and "n_pairs" in res.output, res.output
    assert _snapshot(v) == before


def test_steer_make_refuses_a_zero_vector(tmp_path):
    """Identical positive and negative texts give a zero vector: refused by name, nothing saved."""
    from probescope.cli import app

    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"positive": t, "negative": t}) + "\n" for t in ["a b c", "d e f"]))
    out = tmp_path / "v"
    res = CliRunner().invoke(app, ["steer", "make", "--model", "tiny-llama", "--layers", "1", "--pairs", str(pairs),
                                   "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "zero at every layer" in res.output, res.output
    assert not out.exists()
    for text, msg in [("", "holds no pairs"), (json.dumps({"pos": "a", "neg": "b"}) + "\n",
                                               "record 1: no text in 'positive' and 'negative' (it has 'pos', 'neg')")]:
        pairs.write_text(text)
        res = CliRunner().invoke(app, ["steer", "make", "--model", "tiny-llama", "--layers", "1", "--pairs", str(pairs),
                                       "--out", str(out), "--quiet"])
        assert res.exit_code == 2 and msg in " ".join(res.output.split()), res.output


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path):
    """#37 item 6: Ctrl-C during a job prints one line (kept where, the command that resumes), exit code 130."""
    def stop(cfg):
        raise KeyboardInterrupt

    @dataclass
    class _Resumable:
        out: str = option(str(tmp_path / "r"), "run folder")
        resume: bool = option(True, "resume")

    app = typer.Typer()
    config_command(app, "job", _Resumable, stop)
    config_command(app, "plain", _Cfg, stop)
    res = CliRunner().invoke(app, ["job"])
    flat = " ".join(res.output.split())
    assert res.exit_code == 130 and "interrupted: everything committed so far is kept in" in flat
    assert "to resume from it" in flat and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["plain"])
    assert res.exit_code == 130 and "interrupted: nothing was written" in " ".join(res.output.split())


# options named in our messages that belong to other programs (pip, llama.cpp, the reasoner's training script)
# (and "--option", the placeholder in "write a leading minus as --option=-1,0,1")
FOREIGN = {"--no-deps", "--stage", "--skip-eval", "--ship-v2", "--control-vector-scaled", "--option"}
GROUP = {"probes": "probe", "sae": "sae", "steering": "steer", "exit": "exit", "unlearn": "unlearn",
         "curvature": "curvature", "circuits": "circuit", "manifolds": "manifold", "patching": "patch"}
# tasks/ (the data registry) serves every wing's commands: its messages may name any command's option


def _cli_options() -> dict[tuple[str, ...], set[str]]:
    import probescope.cli as cli

    out: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))
        else:
            out[path] = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}

    walk(typer.main.get_command(cli.app), ())
    return out


def test_advice_names_options_that_exist():
    """#37 item 8: every `--option` named in a message, hint or help string of a wing is an option of one of that
    wing's commands (of any command for core/, report/ and the root); `curvature eval` suggested
    --allow-other-model, which it did not have, and `steer icl` pointed to a --tasks it never had."""
    import ast
    import re
    from pathlib import Path

    import probescope

    opts = _cli_options()
    everywhere = set().union(*opts.values()) | {"--debug", "--help"}
    root = Path(probescope.__file__).parent
    pat = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w-])")
    cmd_pat = re.compile(r"probescope ((?:[a-z][a-z-]* ){0,1}[a-z][a-z-]*)")
    bad = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if rel.parts[0] == "report" and rel.name == "browser.py":  # Chromium's own flags
            continue
        group = GROUP.get(rel.parts[0]) if len(rel.parts) > 1 else None
        known = (set().union(*(o for p, o in opts.items() if p and p[0] == group)) | {"--debug", "--help"}
                 if group and any(p and p[0] == group for p in opts) else everywhere)
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = set()  # a string that names another wing's command may name that command's options
                for words in (m.group(1).split() for m in cmd_pat.finditer(node.value)):
                    named |= set().union(set(), *(o for p, o in opts.items() if p[:len(words)] == tuple(words)))
                bad += [f"{rel}:{node.lineno} {o}" for o in pat.findall(node.value) if o not in known | named | FOREIGN]
    assert not bad, bad


def test_curvature_eval_takes_the_option_its_error_names():
    from probescope.clikit import COMMANDS, _option_fields

    evals = [c for n, c in COMMANDS.items() if "curvature" in c.__module__ and n.startswith("eval")]
    assert evals and all(any(p[-1] == "allow_other_model" for p, *_ in _option_fields(c)) for c in evals)
