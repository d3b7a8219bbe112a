"""Docs that run: every `probescope ...` command in a code block of the README or docs/*.md parses against the CLI
as it is (each subcommand exists, each option exists and its value converts; nothing is run). `a|b|c` in a
subcommand position is each of a, b and c; `[...]` marks an optional part (kept, without the brackets); a `...`
token ends the part of the line that is checked."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

try:  # typer vendors click as typer._click: its contexts and errors are that module's classes, not click's
    from typer._click import core as _core, exceptions as _exc
except ImportError:  # pragma: no cover
    from click import core as _core, exceptions as _exc


def _is_group(cmd) -> bool:
    return hasattr(cmd, "get_command") and hasattr(cmd, "commands")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([a-z]*)\s*$")


def doc_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for every probescope command line in the file's bash (or unlabelled) code blocks."""
    out, lang, buf, start = [], None, "", 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line.strip())
        if m:
            lang = None if lang is not None else m.group(1)
            continue
        if lang is None or lang not in ("", "bash", "sh", "shell", "console"):
            continue
        text = line.strip()
        if text.startswith("$ "):
            text = text[2:]
        if buf:
            buf += " " + text
        elif re.search(r"(^|\s)(-m )?probescope\s", text + " ") and not text.startswith(("#", "pip", "import", "from")):
            buf, start = text, i
        else:
            continue
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        out.append((start, buf))
        buf = ""
    return out


def _expand(args: list[str]) -> list[list[str]]:
    """Alternatives `a|b` in the first plain words (the subcommands) become one command line each."""
    lines = [[]]
    for j, a in enumerate(args):
        if "|" in a and not a.startswith("-") and all(not x.startswith("-") for x in args[:j]):
            lines = [ln + [alt] for ln in lines for alt in a.split("|") if alt]
        else:
            lines = [ln + [a] for ln in lines]
    return lines


def _args(cmd: str) -> list[str]:
    words = shlex.split(cmd.replace("[", " ").replace("]", " "), comments=True)
    for j, w in enumerate(words):  # `probescope X`, `python -m probescope X`, `torchrun ... -m probescope X`
        if w == "probescope" or w.endswith("/probescope"):
            words = words[j + 1:]
            break
    if "..." in words:
        words = words[:words.index("...")]
    return [w for w in words if w != "…"]


CASES = [pytest.param(p, n, c, id=f"{p.name}:{n}") for p in DOCS for n, c in doc_commands(p)]


def test_docs_have_commands():
    """The collector finds the README's commands (a collector that found none would pass every doc)."""
    assert len([c for c in CASES if c.values[0].name == "README.md"]) >= 10
    assert len(CASES) >= 40


def test_a_wrong_command_does_not_parse():
    """The check can fail: an unknown option, an unknown subcommand and a value of the wrong type are caught."""
    for bad in ("probescope probe train --no-such-option 1", "probescope probe trian", "probescope sae train --k x"):
        with pytest.raises(pytest.fail.Exception):
            check_command(Path("x.md"), 1, bad)


@pytest.mark.parametrize("path,line,cmd", CASES)
def test_doc_command_parses(path: Path, line: int, cmd: str):
    check_command(path, line, cmd)


def check_command(path: Path, line: int, cmd: str) -> None:
    import probescope.cli as cli

    root = typer.main.get_command(cli.app)
    for args in _expand(_args(cmd)):
        group, rest, name = root, list(args), "probescope"
        while _is_group(group) and rest and not rest[0].startswith("-"):
            sub = group.get_command(_core.Context(group), rest[0])
            if sub is None:
                pytest.fail(f"{path.name}:{line}: `{name} {rest[0]}` is not a command ({cmd})")
            name, group, rest = f"{name} {rest[0]}", sub, rest[1:]
        if _is_group(group) and not getattr(group, "invoke_without_command", False):
            rest = [r for r in rest if r not in ("--help",)]
            if rest and not all(r.startswith("-") for r in rest):
                pytest.fail(f"{path.name}:{line}: {cmd}")
            continue  # (a group that runs without a subcommand, like `unlearn` = `unlearn run`, parses below)
        if "..." in cmd.split() and not rest:
            continue
        try:
            group.make_context(name, rest, resilient_parsing=False)
        except _exc.UsageError as e:
            pytest.fail(f"{path.name}:{line}: `{cmd}` does not parse: {e.format_message()}")


def test_commands_named_in_messages_exist():
    """Advice in the source (an error's fix, a hint, a printed next step) names commands that exist: every
    `probescope A [B] --option` or backticked `probescope A [B]` in a string resolves to a command (its options are
    checked by tests/test_checks.py's advice test). `unlearn organism` printed `probescope unlearn --model ...`,
    which is not a command (`unlearn run` is)."""
    import ast

    import probescope
    import probescope.cli as cli

    root = typer.main.get_command(cli.app)
    pats = [re.compile(r"probescope ((?:[a-z][a-z-]* ){0,2}[a-z][a-z-]*) --[a-z]"),
            re.compile(r"`probescope ((?:[a-z][a-z-]* ){0,2}[a-z][a-z-]*)`")]
    bad, seen = [], 0
    for f in sorted(Path(probescope.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            for pat in pats:
                for words in (m.group(1).split() for m in pat.finditer(node.value)):
                    seen += 1
                    cmd = root
                    for w in words:
                        if not _is_group(cmd):
                            break
                        sub = cmd.get_command(_core.Context(cmd), w)
                        if sub is None:
                            bad.append(f"{f.name}:{node.lineno} probescope {' '.join(words)}")
                            break
                        cmd = sub
                    else:
                        if _is_group(cmd) and pat is pats[0] and not getattr(cmd, "invoke_without_command", False):
                            # options given to a group that needs a subcommand
                            bad.append(f"{f.name}:{node.lineno} probescope {' '.join(words)} (needs a subcommand)")
    assert seen >= 20 and not bad, bad


# every wing (a folder of src/probescope/ other than the floors) and the doc that explains it
WING_DOCS = {"probes": "probes.md", "sae": "sae.md", "exit": "early_exit.md", "steering": "steering.md",
             "patching": "patching.md", "finetune": "concepts.md", "unlearn": "unlearning.md",
             "curvature": "curvature.md", "circuits": "circuits.md", "manifolds": "manifolds.md", "store": "store.md",
             "tasks": "data.md"}
FLOORS = {"core", "report", "assets"}


def test_every_wing_has_its_doc_linked_from_the_readme():
    """#36: docs/<wing>.md for every wing, linked from the README (a new wing without a doc fails here)."""
    import probescope

    wings = {p.name for p in Path(probescope.__file__).parent.iterdir()
             if p.is_dir() and (p / "__init__.py").exists() and p.name not in FLOORS}
    assert wings - set(WING_DOCS) == set(), f"wings without a doc entry: {sorted(wings - set(WING_DOCS))}"
    readme = (ROOT / "README.md").read_text()
    for wing, doc in WING_DOCS.items():
        assert (ROOT / "docs" / doc).exists(), f"{wing}: docs/{doc} does not exist"
        assert f"](docs/{doc}" in readme, f"{wing}: the README does not link docs/{doc}"
