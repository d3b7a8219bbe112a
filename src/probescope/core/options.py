"""Config dataclasses whose fields double as CLI options (`clikit.config_command` reads the metadata), and the
option groups every job shares, declared once here.

`option(default, help, flag=..., parse=..., cli=False, argument=True, <rules>)` declares one field; the rules
(`min`, `gt`, `choices`, `nonempty`, ...) are checked by `core.checks.check_values`.

A job's config inherits the groups it needs and adds its own fields:

    @dataclass
    class FindConfig(ModelOptions, RunOptions):
        DEFAULTS = {"threads": 1}          # this job's own default for a shared field (declared nowhere else)
        concept: str = option("days", "...")

`Checked` (the base of every group) runs `check_values` on construction, so the Python API refuses what the CLI
refuses, with the same message. Shared fields are keyword-only; config.json keeps its flat keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

MODEL_HELP = "built-in name (probescope models), HF folder or .gguf file"


def option(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field with its option metadata; a callable default (e.g. `list`, a lambda) is a factory."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, **meta}, **kw)


class Checked:
    """Base of the option groups: checks every declared rule on construction; `DEFAULTS` (a class attribute)
    gives a subclass its own default for an inherited field without declaring the field again."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("DEFAULTS")
        if not own:
            return
        inherited: dict[str, dataclasses.Field] = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(getattr(base, "__dataclass_fields__", {}))
        ann = cls.__dict__.get("__annotations__")
        if ann is None:
            ann = {}
            cls.__annotations__ = ann
        for name, default in own.items():
            f = inherited.get(name)
            if f is None:
                raise TypeError(f"{cls.__name__}.DEFAULTS names {name!r}, which no option group declares")
            ann[name] = f.type
            kw_default = {"default_factory": default} if callable(default) else {"default": default}
            setattr(cls, name, field(metadata=f.metadata, kw_only=True, **kw_default))

    def __post_init__(self) -> None:
        from .checks import check_values

        check_values(self)


@dataclass(kw_only=True)
class ModelOptions(Checked):
    """The model a job loads."""

    model: str = option("smollm2-135m", MODEL_HELP, flag="--model -m",
                        nonempty="give a built-in name (e.g. smollm2-135m), an HF folder or a .gguf file")


@dataclass(kw_only=True)
class SourceModelOptions(Checked):
    """The model of a job that reads an artifact (a vector, an SAE, transcoders, a graph): by default the one the
    artifact was made on."""

    model: str | None = option(None, "default: the model the input was made on (named in its config or manifest); "
                                     "or a built-in name, HF folder or .gguf file", flag="--model -m")


@dataclass(kw_only=True)
class RunOptions(Checked):
    """Seed and threads: how a job draws and how many CPU threads it uses."""

    seed: int = option(0, "seed of every random draw of the job (data, splits, order, init): the same seed gives "
                          "the same run")
    threads: int = option(0, "torch threads (0: leave torch's setting)", min=0)


@dataclass(kw_only=True)
class DeviceOptions(Checked):
    """Where the job computes."""

    device: str = option("auto", "auto (CUDA when present) | cpu | cuda[:N]")


@dataclass(kw_only=True)
class LoraOptions(Checked):
    """A LoRA the job trains (rank, learning rate, steps, batch)."""

    lora_r: int = option(8, "LoRA rank", min=1)
    lora_lr: float = option(2e-3, "LoRA learning rate", gt=0)
    lora_steps: int = option(24, "LoRA optimizer steps", min=1)
    lora_batch: int = option(8, "LoRA examples per step", min=1)


@dataclass(kw_only=True)
class CorpusOptions(Checked):
    """The texts a corpus job reads activations on (cache, SAE train/eval/latents, transcoders, curvature, SAE
    clusters): the user's file, or the built-in corpus; `Job.texts()` reads them."""

    data: str | None = option(None, "texts: a JSONL/CSV/TXT file or a datasets folder; default: the built-in corpus "
                                    "(stdlib docstrings)")
    text_field: str = option("text", "the text column of a JSONL/CSV file or datasets folder",
                             nonempty="give the column that holds the texts, e.g. --text-field text")


GROUPS: tuple[type, ...] = (ModelOptions, SourceModelOptions, RunOptions, DeviceOptions, LoraOptions)
"""The groups whose field names no job declares itself (a `data` field of labelled examples or problems is a job's
own; a corpus job's `data` comes from `CorpusOptions`, which the corpus test in tests/test_house.py checks)."""
