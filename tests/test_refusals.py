"""Nothing is written before every check passes (#37 item 2), for EVERY job command of the CLI.

Each command line found by walking the CLI (`job_commands`, the same set as `clikit.COMMANDS`) is run, in process,
from an empty working folder that holds one earlier run (`prev/`: another kind's run.json, a config.json, a
metrics.json), and refused three ways:

(a) every option that declares a rule (core/checks.py: RULE_KEYS in its metadata, or its name in NAMED; every float
    option is also finite) given a value that breaks it, picked from the rule itself;
(b) the --out rule: an --out holding another kind of run;
(c) a layer (or site) out of range on a tiny llama saved as an HF folder (4 layers).

Each refusal must exit with code 2, print one line that names the option (or the folder), and leave the whole working
folder as it was: the same names, bytes and mtimes, folders included (nothing written, not even written and taken
back by the runner's undo). Where a job writes and the undo takes it back (the content as it was, a folder's mtime
changed), the case is an xfail(strict=True) raising `WrittenAndTakenBack`, naming the wing code (WRITE_FIRST,
FILE_OUT); a content change fails outright. A command without a case here (a new command) fails
`test_every_job_command_has_a_case`; the SKIP tables say why a case does not apply to a command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")


def job_commands() -> dict[str, type]:
    """{'probe train': TrainConfig, ...}: every job command (registered by `clikit.config_command`) by the command
    line a user types, with its config dataclass."""
    import probescope.cli as cli

    found: dict[str, type] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))
        elif getattr(cmd.callback, "probescope_job", False):
            found[" ".join(path)] = cmd.callback.probescope_config

    walk(typer.main.get_command(cli.app), ())
    return found


JOBS = job_commands()

# Commands whose options declare no rule and hold no float: there is no value to refuse at the door.
SKIP_VALUE = {
    "data list": "it has no option at all",
}

# Quick valid arguments for every job command on the tiny llama HF folder ({model}), a two-row steering pairs file
# ({pairs}), patching pairs ({patch}) and a small text corpus ({text}). An input made by another job (a vector, an
# SAE, a probe, a collect run, factors, a graph) is named ({missing}) but not built: a job reads it only once it runs,
# after the runner's checks, status line and --out rule (tests/test_progress_tty.py kills each job once its line shows).
QUICK = {
    "cache": ["--model", "{model}", "--data", "{text}", "--layers", "1", "--context-len", "16", "--max-tokens", "64"],
    "train": ["--model", "{model}", "--layer", "1", "--n-train", "8", "--n-eval", "4", "--max-steps", "1"],
    "patch": ["--model", "{model}", "--task", "{patch}", "--families", "resid_pre", "--method", "exact"],
    "probe train": ["--model", "{model}", "--n", "10", "--layer", "1"],
    "probe eval": ["--probe", "{missing}", "--model", "{model}", "--n", "10"],
    "probe sweep": ["--model", "{model}", "--n", "10", "--layers", "1"],
    "probe shift": ["--model", "{model}", "--n", "10", "--layer", "1"],
    "probe negation": ["--model", "{model}", "--layer", "1", "--n-pairs", "10", "--n-heldout", "4", "--bootstrap", "10"],
    "probe regimes": ["--model", "{model}", "--layer", "1", "--n", "10", "--sizes", "4", "--bootstrap", "10"],
    "probe leakage": ["--model", "{model}", "--n", "10", "--layer", "1", "--keywords", "true"],
    "probe organism": ["--model", "{model}", "--layer", "1", "--n", "10"],
    "probe sandbag": ["--model", "{model}", "--layer", "1", "--n", "10", "--n-off", "5", "--n-train", "4",
                      "--lora-steps", "1", "--bootstrap", "10"],
    "sae train": ["--model", "{model}", "--data", "{text}", "--layer", "1", "--tokens", "512", "--batch-size", "64",
                  "--context-len", "16", "--expansion", "2", "--k", "4"],
    "sae eval": ["--sae", "{missing}"],
    "sae latents": ["--sae", "{missing}"],
    "steer make": ["--model", "{model}", "--pairs", "{pairs}", "--layers", "1", "--n-pairs", "2"],
    "steer apply": ["--vector", "{missing}", "--prompt", "hi", "--max-new-tokens", "2"],
    "steer export": ["--vector", "{missing}", "--out", "v.gguf"],
    "steer eval": ["--vector", "{missing}", "--n-prompts", "2", "--n-neutral", "2", "--max-new-tokens", "2"],
    "steer compare": ["--model", "{model}", "--layer", "1", "--n-pairs", "2", "--n-prompts", "2", "--n-neutral", "2",
                      "--max-new-tokens", "2", "--lora-steps", "1"],
    "steer compare-icl": ["--model", "{model}", "--n-shots", "2", "--n-examples", "4", "--n-queries", "4", "--n-neutral", "2",
                          "--lora-steps", "1"],
    "steer icl": ["--model", "{model}", "--layers", "1", "--n-queries", "4", "--n-dev", "4", "--n-boot", "10",
                  "--shots", "0,1,2,4", "--strengths=-1,1"],
    "exit collect": ["--model", "{model}", "--layers", "1", "--n-train", "8", "--n-val", "1", "--n-test", "1",
                     "--max-new-tokens", "4"],
    "exit train": ["--collect", "{missing}"],
    "exit calibrate": ["--collect", "{missing}", "--probe", "{missing}"],
    "exit eval": ["--collect", "{missing}", "--probe", "{missing}"],
    "exit run": ["2+2?", "--model", "{model}", "--max-new-tokens", "4"],
    "exit selftrain": ["--model", "{model}", "--rounds", "1", "--problems", "2", "--n-test", "2", "--max-new-tokens", "4",
                       "--drift-n", "0", "--lora-steps", "1"],
    "unlearn run": ["--model", "{model}", "--layer", "1", "--n-facts", "4", "--n-eval", "2", "--steps", "1"],
    "unlearn audit": ["--run", "{missing}"],
    "unlearn organism": ["--model", "{model}", "--from-layer", "1", "--n-entities", "10", "--epochs", "1"],
    "curvature organism": ["--model", "{model}", "--layers", "1", "--n-canaries", "4", "--steps", "1"],
    "curvature fit": ["--model", "{model}", "--data", "{text}", "--layers", "1", "--max-tokens", "256"],
    "curvature edit": ["--factors", "{missing}", "--model", "{model}"],
    "curvature eval": ["--organism", "{missing}", "--factors", "{missing}"],
    "circuit attribute": ["--prompt", "x", "--transcoders", "{missing}", "--model", "{model}"],
    "circuit transcoders": ["--model", "{model}", "--tokens", "512", "--batch-size", "64", "--context-len", "16",
                            "--expansion", "2", "--k", "4"],
    "circuit labels": ["--transcoders", "{missing}"],
    "circuit intervene": ["--graph", "{missing}"],
    "manifold find": ["--model", "{model}", "--layers", "1", "--n", "28"],
    "manifold move": ["--model", "{model}", "--layers", "1", "--limit", "4"],
    "manifold transform": ["--model", "{model}", "--layers", "1"],
    "manifold linebreak": ["--model", "{model}", "--layers", "1", "--n", "16", "--pairs", "10", "--folds", "2"],
    "manifold clusters": ["--sae", "{missing}", "--model", "{model}"],
    "data list": [],
    "data show": ["mcq", "--n", "1"],
}

# Commands without an --out run folder (the --out rule cannot apply).
SKIP_OUT = {
    "sae eval": "writes its metrics into the SAE folder it reads (--sae), it has no --out",
    "sae latents": "writes its labels into the SAE folder it reads (--sae), it has no --out",
    "unlearn audit": "writes its audit into the unlearn run it reads (--run), it has no --out",
    "circuit labels": "writes the labels into the transcoders folder it reads (--transcoders), it has no --out",
    "data list": "prints the generated sets; it writes nothing",
    "data show": "prints a few records; it writes nothing",
    "steer export": "--out is a .gguf file it writes, not a run folder (an existing folder there is tested below)",
    "exit calibrate": "--out is the calibration file it writes (default: in the probe folder), not a run folder "
                      "(an existing folder there is tested below)",
}

# Commands that take a layer or a site: the arguments that name one out of range on the 4-layer tiny llama
# ({model} is its HF folder, {pairs} a two-row patching/steering pairs file, {text} a small text corpus).
LAYER = {
    "cache": ["--model", "{model}", "--data", "{text}", "--layers", "9", "--context-len", "16", "--max-tokens", "64"],
    "train": ["--model", "{model}", "--layer", "9", "--lora-upto-layer", "--n-train", "8", "--n-eval", "4",
              "--max-steps", "1"],
    "probe train": ["--model", "{model}", "--layer", "9", "--n", "10"],
    "probe sweep": ["--model", "{model}", "--layers", "1,9", "--n", "10"],
    "probe shift": ["--model", "{model}", "--layer", "9", "--n", "10"],
    "probe negation": ["--model", "{model}", "--layer", "9", "--n-pairs", "10", "--n-heldout", "4"],
    "probe regimes": ["--model", "{model}", "--layer", "9", "--n", "10"],
    "probe leakage": ["--model", "{model}", "--layer", "9", "--n", "10", "--keywords", "true"],
    "probe organism": ["--model", "{model}", "--layer", "9", "--n", "10"],
    "probe sandbag": ["--model", "{model}", "--layer", "9", "--n", "10", "--n-train", "4", "--lora-steps", "1"],
    "sae train": ["--model", "{model}", "--data", "{text}", "--layer", "9", "--tokens", "512", "--batch-size", "64",
                  "--context-len", "16"],
    "steer make": ["--model", "{model}", "--pairs", "{pairs}", "--layers", "9", "--n-pairs", "2"],
    "steer compare": ["--model", "{model}", "--layer", "9", "--n-pairs", "2"],
    "steer icl": ["--model", "{model}", "--layers", "9", "--n-queries", "4", "--n-dev", "4"],
    "exit collect": ["--model", "{model}", "--layers", "9", "--n-train", "8", "--n-val", "1", "--n-test", "1"],
    "unlearn run": ["--model", "{model}", "--layer", "9", "--n-facts", "4", "--n-eval", "2", "--steps", "1"],
    "unlearn organism": ["--model", "{model}", "--from-layer", "9", "--n-entities", "10", "--epochs", "1"],
    "curvature organism": ["--model", "{model}", "--layers", "9", "--n-canaries", "4", "--steps", "1"],
    "curvature fit": ["--model", "{model}", "--data", "{text}", "--layers", "9", "--max-tokens", "256"],
    "manifold find": ["--model", "{model}", "--layers", "9", "--n", "28"],
    "manifold move": ["--model", "{model}", "--layers", "9", "--limit", "4"],
    "manifold transform": ["--model", "{model}", "--layers", "9"],
    "manifold linebreak": ["--model", "{model}", "--layers", "9", "--pairs", "10", "--folds", "2"],
    # on artifacts made on the tiny llama ({vector}: steer make at layer 1, {sae}: sae train at resid_post.1)
    "steer apply": ["--vector", "{vector}", "--layers", "9", "--prompt", "hi", "--max-new-tokens", "2"],
    "exit train": ["--collect", "{collect}", "--layers", "9"],  # {collect}: exit collect at layer 1
    "exit eval": ["--collect", "{collect}", "--probe", "{probe}", "--no-live", "--correctness-probe",
                  "--correctness-layers", "9"],
    "sae eval": ["--sae", "{sae}", "--hook", "resid_post.9", "--data", "{text}", "--contexts", "2", "--context-len",
                 "16", "--tokens", "32"],
    "manifold clusters": ["--sae", "{sae}", "--site", "resid_post.9", "--data", "{text}", "--contexts", "4",
                          "--context-len", "16"],
}
SKIP_LAYER = {
    # no layer or site option at all
    **{c: "takes no layer or site" for c in (
        "patch", "probe eval", "sae latents", "steer export", "steer eval", "steer compare-icl", "exit calibrate",
        "exit run", "exit selftrain", "unlearn audit", "curvature edit", "curvature eval",
        "circuit attribute", "circuit transcoders", "circuit labels", "circuit intervene", "data list", "data show")},
}


# -----------------------------------------------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` (and `root` itself): kind, mtime (ns) and, for a file, its sha256. Equal snapshots:
    nothing was written, not even a file written and taken back (a folder's mtime records that)."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(root))] = ("dir" if p.is_dir() else "file", st.st_mtime_ns, digest)
    return out


def changes(before: dict, after: dict, folders: bool = True) -> list[str]:
    """What differs between two snapshots, in words; `folders=False`: the content only (names, and each file's bytes
    and mtime), not a folder's mtime (which records a file written and taken back)."""
    if not folders:
        before, after = ({k: v if v[0] == "file" else v[0] for k, v in x.items()} for x in (before, after))
    added = [f"+{k}" for k in after if k not in before]
    gone = [f"-{k}" for k in before if k not in after]
    changed = [f"~{k}" for k in before if k in after and before[k] != after[k]]
    return added + gone + changed


class WrittenAndTakenBack(AssertionError):
    """The folder's content is as it was, but a file was written in it (and removed by the runner's undo)."""


def previous_run(root: Path, kind: str = "other-kind") -> Path:
    """`root/prev`: what an earlier run of another kind left (run.json, config.json, metrics.json)."""
    d = root / "prev"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"kind": kind, "started": "2026-01-01T00:00:00"}))
    (d / "config.json").write_text(json.dumps({"model": "earlier", "seed": 7}))
    (d / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    return d


_CLI = None


def cli(args: list[str]) -> tuple[int, list[str], str]:
    """Run `probescope ARGS` in process: (exit code, the non-empty stderr lines, stdout + stderr)."""
    global _CLI
    import probescope.cli as pcli

    if _CLI is None:
        _CLI = typer.main.get_command(pcli.app)
    r = CliRunner().invoke(_CLI, [str(a) for a in args], env={"COLUMNS": "400"})
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    return r.exit_code, lines, r.output


def fields(cls: type) -> list[tuple[str, dataclasses.Field, Any, Any]]:
    """(option name, field, type, default) of every CLI option of the config class."""
    from probescope.clikit import _option_fields

    return [(path[-1], f, typ, default) for path, f, typ, default in _option_fields(cls)]


def flag(name: str, f: dataclasses.Field) -> str:
    """The option as the CLI spells it ('--n-pairs'; the first of 'a flag and its short form')."""
    return (f.metadata.get("flag") or "--" + name.replace("_", "-")).split(" ")[0].split("/")[0]


def _scalar(typ: Any) -> Any:
    """int, float or str: what one value of the field is (inside Optional, list or tuple)."""
    args = [a for a in typing.get_args(typ) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(typ) in (typing.Union, getattr(__import__("types"), "UnionType", None), list, tuple) and args:
        return _scalar(args[0])
    return typ


OMIT = object()  # the bad "value" of a repeatable option that must be given: leaving it out


def bad_values(f: dataclasses.Field, typ: Any, default: Any = None) -> list[Any]:
    """CLI texts that break the field's rule (its own metadata, or the shared one by name), and 'nan' for a float."""
    from probescope.core.checks import NAMED, RULE_KEYS

    rule = {k: f.metadata[k] for k in RULE_KEYS if k in f.metadata} or dict(NAMED.get(f.name, {}))
    one = _scalar(typ)
    numeric = float if (one is float or rule.get("csv")) else int if one is int else None
    out = []
    if rule.get("nonempty"):  # a repeatable option (a list of texts) is empty when not given at all, if by default
        repeatable = typing.get_origin(typ) is list and f.metadata.get("parse") is None and one is str
        if not repeatable:
            out.append("")
        elif not default:
            out.append(OMIT)
    if "choices" in rule:
        out.append("not-a-choice")
    if numeric is not None:
        also = tuple(rule.get("also", ()))
        for key, cands in (("min", lambda v: [v - 1, v - 0.5, v - 3]), ("gt", lambda v: [v, v - 1]),
                           ("max", lambda v: [v + 1, v + 0.5, v + 3]), ("lt", lambda v: [v, v + 1])):
            if key not in rule:
                continue
            ok = [c for c in cands(rule[key]) if c not in also and (numeric is float or float(c).is_integer())]
            if ok:
                out.append(str(int(ok[0]) if numeric is int else float(ok[0])))
        if numeric is float and rule.get("finite", True):
            out.append("nan")
    return out


def required_args(cls: type, but: str = "") -> list[str]:
    """Values for the options that must be given (no default, or an empty default that must not stay empty), but
    option `but`: a positional question, a data set name, an SAE folder."""
    from probescope.core.checks import NAMED, RULE_KEYS

    args = []
    for name, f, _, default in fields(cls):
        rule = {k: f.metadata[k] for k in RULE_KEYS if k in f.metadata} or NAMED.get(f.name, {})
        if name != but and (default is ... or (rule.get("nonempty") and not default)):
            args += ["x"] if f.metadata.get("argument") else [flag(name, f), "x"]
    return args


def has_out(cls: type) -> bool:
    return any(name == "out" for name, *_ in fields(cls))


# -----------------------------------------------------------------------------------------------------------------
# the table is whole
# -----------------------------------------------------------------------------------------------------------------

def test_every_job_command_has_a_case():
    """The walk finds every command of `clikit.COMMANDS`, and each one is in every table (a case or a SKIP)."""
    from probescope.clikit import COMMANDS

    ours = {k: c for k, c in COMMANDS.items() if c.__module__.startswith("probescope.")}  # not the tests' own configs
    assert len(JOBS) == len(ours) and set(JOBS.values()) == set(ours.values()), (sorted(JOBS), sorted(ours))
    assert len(JOBS) >= 40
    layered = {c for c, cls in JOBS.items() if any(re.search(r"layer|site|hook", n) for n, *_ in fields(cls))}
    missing = {
        "value (a)": [c for c, cls in JOBS.items() if c not in SKIP_VALUE and not any(
            bad_values(f, t, d) for _, f, t, d in fields(cls))],
        "value (a) skipped but declares a rule": [c for c in SKIP_VALUE if c in JOBS and any(
            bad_values(f, t, d) for _, f, t, d in fields(JOBS[c]))],
        "layer (c)": [c for c in JOBS if c not in LAYER and c not in SKIP_LAYER],
        "layer (c) skipped but takes a layer": [c for c in layered if c in SKIP_LAYER
                                                and SKIP_LAYER[c] == "takes no layer or site"],
        "--out (b)": [c for c, cls in JOBS.items() if not has_out(cls) and c not in SKIP_OUT],
        "quick arguments": [c for c in JOBS if c not in QUICK],
    }
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}
    assert not set(LAYER) & set(SKIP_LAYER)


# -----------------------------------------------------------------------------------------------------------------
# (a) a value out of range or empty: refused at the door, nothing written
# -----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(set(JOBS) - set(SKIP_VALUE)))
def test_a_bad_value_is_refused_before_anything_is_written(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prev = previous_run(tmp_path)
    cls = JOBS[command]
    out = ["--out", str(prev)] if has_out(cls) else []
    failures, tried = [], 0
    for name, f, typ, default in fields(cls):
        for value in bad_values(f, typ, default):
            tried += 1
            opt = flag(name, f)
            given = [] if value is OMIT else [value] if f.metadata.get("argument") else [f"{opt}={value}"]
            before = snapshot(tmp_path)
            code, lines, text = cli([*command.split(), *required_args(cls, but=name), *given,
                                     *(out if name != "out" else []), "--quiet"])
            diff = changes(before, snapshot(tmp_path))
            if code != 2 or len(lines) != 1 or not lines[0].startswith("error:") or opt not in lines[0] or diff:
                failures.append(f"{opt}={value!r}: exit {code}, {lines[-3:] or text[-300:]!r}, changed {diff}")
    assert tried, f"{command}: no option to refuse (add it to SKIP_VALUE with the reason)"
    assert not failures, "\n".join(failures)


# -----------------------------------------------------------------------------------------------------------------
# (b) the --out rule: a folder holding another kind of run is refused, byte-identical
# -----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(c for c in JOBS if c not in SKIP_OUT))
def test_an_out_holding_another_kind_of_run_is_refused(command, tmp_path, monkeypatch, tiny_folder):
    monkeypatch.chdir(tmp_path)
    prev = previous_run(tmp_path)
    args = [a.format(**tiny_folder) for a in QUICK[command]]
    before = snapshot(tmp_path)
    code, lines, text = cli([*command.split(), *args, "--out", str(prev), "--quiet"])
    assert code == 2 and len(lines) == 1, text[-2000:]
    assert "prev holds a other-kind run" in lines[0] and "use another --out" in lines[0], lines
    assert not changes(before, snapshot(tmp_path)), changes(before, snapshot(tmp_path))


# Commands whose --out is a file: an existing folder there must be refused, the folder as it was. A reason marks a
# command that still writes the whole file to a temp file beside --out before the rename finds a folder there.
FILE_OUT = {
    "steer export": (["--vector", "{vector}"], None),
    "exit calibrate": (["--collect", "{collect}", "--probe", "{probe}"], None),
}


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.xfail(
    strict=True, raises=WrittenAndTakenBack, reason=why)) if why else c for c, (_, why) in FILE_OUT.items()])
def test_a_folder_where_a_file_is_written_is_refused(command, tmp_path, monkeypatch, tiny_folder):
    """The line names the folder the user gave (not the temp file of an atomic write); nothing changes."""
    monkeypatch.chdir(tmp_path)
    prev = previous_run(tmp_path)
    before = snapshot(tmp_path)
    args = [a.format(**tiny_folder) for a in FILE_OUT[command][0]]
    code, lines, text = cli([*command.split(), *args, "--out", str(prev), "--quiet"])
    assert code == 2 and len(lines) == 1, text[-2000:]
    assert f"({prev})" in lines[0] and ".tmp" not in lines[0], lines
    after = snapshot(tmp_path)
    assert not changes(before, after, folders=False), changes(before, after, folders=False)
    if changes(before, after):
        raise WrittenAndTakenBack(f"written and taken back: {changes(before, after)}")


# -----------------------------------------------------------------------------------------------------------------
# (c) a layer out of range on the loaded model: refused by name, nothing written
# -----------------------------------------------------------------------------------------------------------------

def tiny_inputs(root: Path) -> dict[str, str]:
    """The seeded tiny llama saved as an HF folder (weights, config, tokenizer; 4 layers) and the small inputs the
    tables name: {model}, {pairs}, {patch}, {text}, {missing}."""
    from probescope.core.models import load_model

    model, tok = load_model("tiny-llama")
    model.save_pretrained(root / "tiny-llama")
    tok.save_pretrained(root / "tiny-llama")
    return {"model": str(root / "tiny-llama"), **small_inputs(root), "missing": str(root / "not-built")}


def small_inputs(root: Path) -> dict[str, str]:
    """Steering pairs, patching pairs (one-character answers: one token each for the byte tokenizer) and 20
    texts, written under `root`: {pairs}, {patch}, {text}."""
    from probescope.core.data import default_corpus

    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in (
        {"positive": "I love it", "negative": "I hate it"}, {"positive": "so good", "negative": "so bad"})))
    patch = root / "patch.jsonl"  # the byte tokenizer: one-character answers are one token
    patch.write_text("".join(json.dumps(r) + "\n" for r in (
        {"clean": "ab cd ab x", "corrupt": "ab cd cd x", "answer": "q", "wrong": "z"},
        {"clean": "ef gh ef y", "corrupt": "ef gh gh y", "answer": "q", "wrong": "z"})))
    text = root / "text.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in default_corpus()[:20]))
    return {"pairs": str(pairs), "patch": str(patch), "text": str(text)}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """tiny_inputs, and what other jobs make on the tiny llama, by the CLI: a steering vector ({vector}), an SAE
    ({sae}), an exit collect run ({collect}) and its probe ({probe})."""
    root = tmp_path_factory.mktemp("tiny")
    inputs = tiny_inputs(root)
    made = {"vector": ["steer", "make", "--model", inputs["model"], "--pairs", inputs["pairs"], "--layers", "1",
                       "--n-pairs", "2"],
            "sae": ["sae", "train", "--model", inputs["model"], "--data", inputs["text"], "--layer", "1", "--tokens",
                    "256", "--batch-size", "64", "--context-len", "16", "--expansion", "2", "--k", "4"],
            "collect": ["exit", "collect", "--model", inputs["model"], "--layers", "1", "--n-train", "8", "--n-val", "1",
                        "--n-test", "1", "--max-new-tokens", "4"]}
    made["probe"] = ["exit", "train", "--collect", str(root / "collect"), "--max-epochs", "2"]
    for name, argv in made.items():
        code, _, text = cli([*argv, "--out", str(root / name), "--quiet"])
        assert code == 0, text[-2000:]
        inputs[name] = str(root / name)
    return inputs


# Jobs that open their run folder (run.json, config.json) after loading the model and before their layer check: the
# runner takes the files back, but the folder was written. None left; a new one is listed here with the wing code.
WRITE_FIRST: dict[str, str] = {}
# Jobs that do not refuse a layer out of range (wing code, listed in the report).
NOT_REFUSED: dict[str, str] = {}


def _layer_case(command: str) -> Any:
    if command in WRITE_FIRST:
        return pytest.param(command, marks=pytest.mark.xfail(strict=True, raises=WrittenAndTakenBack,
                                                             reason=WRITE_FIRST[command]))
    if command in NOT_REFUSED:
        return pytest.param(command, marks=pytest.mark.xfail(strict=True, reason=NOT_REFUSED[command]))
    return command


@pytest.mark.parametrize("command", [_layer_case(c) for c in sorted(LAYER) if c in JOBS])
def test_a_layer_out_of_range_is_refused_before_anything_is_written(command, tmp_path, monkeypatch, tiny_folder):
    monkeypatch.chdir(tmp_path)
    kept = tmp_path / "kept"  # a folder that already holds files of the user's (no run)
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    cls = JOBS[command]
    args = [a.format(**tiny_folder) for a in LAYER[command]]
    opt, value = next((a, b) for a, b in zip(args, args[1:]) if re.search(r"(^|[,.])9$", b))  # given layer 9
    written = []
    # a fresh --out, and a folder that holds files; a job without --out writes into its input: the whole cwd is hashed
    for out in ((tmp_path / "new" / "run", kept) if has_out(cls) else (None,)):
        before = snapshot(tmp_path)
        code, lines, text = cli([*command.split(), *required_args(cls), *args,
                                 *(["--out", str(out)] if out else []), "--quiet"])
        assert code == 2 and len(lines) == 1, text[-2000:]
        named = value in lines[0] or (re.search(r"(?<!\d)9(?!\d)", lines[0]) and "out of range" in lines[0])
        assert named and (opt.lstrip("-") in lines[0] or "out of range" in lines[0] or "." in value), lines
        after = snapshot(tmp_path)
        where = out.name if out else "cwd"
        assert not changes(before, after, folders=False), (where, changes(before, after, folders=False))
        written += [f"{where}: {c}" for c in changes(before, after)]
    if written:
        raise WrittenAndTakenBack(f"files were written and taken back: {written}")


def test_a_refused_job_takes_back_the_folders_it_made_even_empty(tmp_path):
    """The runner's undo after a refusal: a fresh --out the job only made (no file yet) is removed up to the first
    folder that existed; run.json/config.json written first are removed with it; an existing folder keeps its files;
    anything else (work to resume) is kept."""
    from probescope.clikit import out_state, undo_refused

    fresh = tmp_path / "a" / "b"
    before = out_state(fresh)
    fresh.mkdir(parents=True)
    undo_refused(fresh, before)
    assert not (tmp_path / "a").exists()

    before = out_state(fresh)
    fresh.mkdir(parents=True)
    (fresh / "run.json").write_text("{}")
    (fresh / "config.json").write_text("{}")
    undo_refused(fresh, before)
    assert not (tmp_path / "a").exists()

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    before = out_state(kept)
    (kept / "run.json").write_text("{}")
    undo_refused(kept, before)
    assert sorted(f.name for f in kept.iterdir()) == ["notes.txt"]

    before = out_state(fresh)
    fresh.mkdir(parents=True)
    (fresh / "run.json").write_text("{}")
    (fresh / "shard-0.safetensors").write_text("work")
    undo_refused(fresh, before)
    assert sorted(f.name for f in fresh.iterdir()) == ["run.json", "shard-0.safetensors"]
