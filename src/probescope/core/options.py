"""One helper for config dataclasses whose fields double as CLI options (`clikit.config_command` reads the
metadata): `option(default, help, flag=..., parse=..., cli=False, argument=True)`."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field with its option metadata; a callable default (e.g. `list`, a lambda) is a factory."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, **meta}, **kw)
