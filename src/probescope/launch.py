"""The `probescope` command's first step: on a terminal, say at once that the job is starting, then import the CLI
(torch and transformers take seconds to import on a busy machine) and run it. Imports nothing heavy itself."""

from __future__ import annotations

import os
import sys

QUIET_FLAGS = ("-h", "--help", "--quiet", "--json")


def early_line(argv: list[str]) -> str | None:
    """What to show before the libraries load: the command as typed; None for help, --quiet, --json, no command."""
    args = argv[1:]
    if not args or any(a in QUIET_FLAGS for a in args) or args[0].startswith("-"):
        return None
    words = []
    for a in args[:2]:
        if a.startswith("-"):
            break
        words.append(a)
    return f"probescope {' '.join(words)}: starting (loading torch and transformers) …"


def main() -> None:
    """Entry point of the `probescope` command."""
    line = early_line(sys.argv) if sys.stderr.isatty() and not os.environ.get("PROBESCOPE_NO_EARLY") else None
    if line:
        sys.stderr.write(line)
        sys.stderr.flush()
    from .cli import main as cli_main

    if line:
        sys.stderr.write("\r\x1b[2K")  # the job's own status line takes the place
        sys.stderr.flush()
    cli_main()
