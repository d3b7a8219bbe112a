"""`clikit.config_command`: a config dataclass is the command (fields → options, nested configs flattened)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from probescope.clikit import config_command


@dataclass
class Inner:
    model: str = field(default="tiny", metadata={"help": "the model", "flag": "--model -m"})
    n: int = field(default=5, metadata={"help": "examples"})
    hidden: bool = field(default=True, metadata={"cli": False})


@dataclass
class Job:
    """A job for the test."""

    text: str = field(default="", metadata={"help": "what to say", "argument": True})
    inner: Inner = field(default_factory=lambda: Inner(n=7))  # the outer default instance sets --n's default
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "layers"})
    kinds: list[str] = field(default_factory=lambda: ["a"], metadata={"help": "kinds", "parse": "names"})
    tags: list[str] = field(default_factory=list, metadata={"help": "repeatable"})
    scales: tuple[float, ...] = field(default=(1.0,), metadata={"help": "scales"})
    live: bool = field(default=True, metadata={"help": "live", "flag": "--live/--no-live"})
    limit: int | None = field(default=None, metadata={"help": "optional"})

    def __post_init__(self) -> None:
        if self.inner.n < 0:
            raise ValueError(f"n={self.inner.n}: use a count ≥ 0 (--n)")


def _app(run):
    app = typer.Typer()
    config_command(app, "job", Job, run)
    app.command("other")(lambda: None)  # two commands: typer keeps the sub-command name
    return app


def test_fields_become_options_and_build_the_nested_config():
    seen = []
    app = _app(lambda cfg: seen.append(cfg) or {"ok": True})
    r = CliRunner().invoke(app, ["job", "hello", "-m", "big", "--layers", "3,4", "--kinds", "x, y", "--tags", "p",
                                 "--tags", "q", "--scales=-1,0.5", "--no-live", "--limit", "9", "--json"])
    assert r.exit_code == 0, r.output
    (cfg,) = seen
    assert cfg == Job(text="hello", inner=Inner(model="big", n=7), layers=[3, 4], kinds=["x", "y"], tags=["p", "q"],
                      scales=(-1.0, 0.5), live=False, limit=9)
    assert json.loads(r.output.strip().splitlines()[-1]) == {"ok": True}


def test_defaults_come_from_the_dataclass():
    seen = []
    r = CliRunner().invoke(_app(lambda cfg: seen.append(cfg) or {}), ["job", "--quiet"])
    assert r.exit_code == 0, r.output
    assert seen == [Job(inner=Inner(n=7))]
    help_text = CliRunner().invoke(_app(lambda c: {}), ["job", "--help"], env={"COLUMNS": "200"}).output
    for opt in ("--model", "--n", "--layers", "--kinds", "--tags", "--scales", "--live", "--no-live", "--limit",
                "--quiet", "--json", "the model", "examples"):
        assert opt in help_text
    assert "--hidden" not in help_text  # cli=False stays API-only


def test_bad_values_are_one_error_line():
    app = _app(lambda cfg: {})
    r = CliRunner().invoke(app, ["job", "--n", "-1"])
    assert r.exit_code == 2 and "n=-1" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["job", "--layers", "a,b"])
    assert r.exit_code == 2 and "comma-separated integers" in r.output and "error:" in r.output and "--layers" in r.output
    r = CliRunner().invoke(_app(lambda cfg: (_ for _ in ()).throw(ValueError("bad model 'x': use tiny"))), ["job"])
    assert r.exit_code == 2 and "bad model 'x'" in r.output


def test_two_options_with_one_name_are_refused():
    @dataclass
    class Clash:
        model: str = "a"
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(TypeError, match="declared twice"):
        config_command(typer.Typer(), "clash", Clash, lambda c: {})


@pytest.mark.parametrize("argv,config", [
    (["probe", "train"], "probescope.probes.config:TrainConfig"),
    (["probe", "sweep"], "probescope.probes.config:SweepConfig"),
    (["sae", "train"], "probescope.sae.run:SaeTrainConfig"),
    (["sae", "eval"], "probescope.sae.run:SaeEvalConfig"),
    (["steer", "make"], "probescope.steering.jobs:MakeConfig"),
    (["steer", "eval"], "probescope.steering.jobs:VectorEvalConfig"),
    (["cache"], "probescope.store.config:CacheConfig"),
    (["patch"], "probescope.patching.run:PatchConfig"),
])
def test_wing_commands_take_every_field_of_their_config(argv, config):
    import importlib

    from probescope.cli import app
    from probescope.clikit import _option_fields

    mod, name = config.split(":")
    cls = getattr(importlib.import_module(mod), name)
    text = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "250"}).output
    for path, f, _, _ in _option_fields(cls):
        flag = (f.metadata.get("flag") or "--" + path[-1].replace("_", "-")).split(" ")[0].split("/")[0]
        assert flag in text, f"{' '.join(argv)} lacks {flag} ({cls.__name__}.{'.'.join(path)})"
    assert dataclasses.is_dataclass(cls)
