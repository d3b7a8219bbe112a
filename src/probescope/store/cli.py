"""`probescope cache` (options: `store.config.CacheConfig`'s fields) and `probescope store verify`."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from ..clikit import JSON, QUIET, config_command, lazy, run_job
from .config import CacheConfig

console = Console(stderr=True)


def _show_cache(s: dict) -> None:
    fixed = f"; redid damaged shards {sorted(s['repaired'])}" if s["repaired"] else ""
    console.print(f"[green]store[/green] {s['store']}: {s['tokens']:,} tokens, layers {s['layers']}, "
                  f"{'complete' if s['complete'] else 'partial (other ranks still running?)'}{fixed}")


def _rank0_store(cfg: CacheConfig, summary: dict) -> str | None:
    return summary["store"] if int(os.environ.get("RANK", "0")) == 0 else None


store_app = typer.Typer(help="Activation stores: check them.", no_args_is_help=True)


@store_app.command("verify")
def store_verify_cmd(
    path: str = typer.Argument(..., help="the store folder (from `probescope cache`)"),
    quick: bool = typer.Option(False, "--quick", help="check file sizes only, not checksums"),
    quiet: bool = QUIET,
    json_out: bool = JSON,
) -> None:
    """Check every committed shard of a store against its done marker (size and sha256); exit 1 if damaged."""
    import json as _json

    from ..core.store import verify_store

    rep = run_job(lambda: verify_store(path, deep=not quick))
    if json_out:
        print(_json.dumps({**rep, "damaged": {str(k): v for k, v in rep["damaged"].items()}}))
    else:
        for i, why in sorted(rep["damaged"].items()):
            console.print(f"[red]damaged[/red] shard {i}: {why}")
        state = "complete" if rep["complete"] else f"{len(rep['uncommitted'])} of {rep['n_shards']} shards not committed yet"
        if rep["ok"] and not quiet:
            console.print(f"[green]ok[/green] {path}: {rep['committed']} committed shards verified, {state}")
        elif not rep["ok"]:
            console.print(f"[red]error:[/red] {path}: {len(rep['damaged'])} damaged shards: rerun `probescope cache` "
                          "with the store's options to redo them")
    if not rep["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount `cache` and `store verify` on the root app."""
    config_command(app, "cache", CacheConfig, lazy(f"{__package__}.run", "run_cache_job"), show=_show_cache,
                   run_dir=_rank0_store, resumes=True)
    app.add_typer(store_app, name="store")
