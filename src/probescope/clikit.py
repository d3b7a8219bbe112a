"""What every job command shares: `--quiet` / `--json` options and the end of a job (report page, JSON, table).

A job command looks like:

    def cmd(..., quiet: bool = QUIET, json_out: bool = JSON):
        with job_output(quiet, json_out):
            res = run(...)                 # progress bars follow --quiet / --json
        finish(run_dir, res, quiet, json_out, show=lambda: print_table(res))
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import typer
from rich.console import Console
from rich.markup import escape

from .core import progress
from .core.checks import check_values

# What a job may raise for bad input or a failing machine: one red line and exit code 2, never a traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, ImportError, FloatingPointError,
               OSError)

QUIET = typer.Option(False, "--quiet", help="no progress bars and no tables (the run folder is written all the same)")
JSON = typer.Option(False, "--json", help="print the job's results as one JSON object on stdout (no bars or tables)")

console = Console(stderr=True)


@contextmanager
def job_output(quiet: bool, json_out: bool) -> Iterator[None]:
    """Silence every progress bar inside the block when `--quiet` or `--json` is given."""
    before = progress.QUIET
    progress.QUIET = before or quiet or json_out
    try:
        yield
    finally:
        progress.QUIET = before


def _os_message(e: OSError) -> str:
    """One line for an operating-system failure: what, where, and the fix."""
    import errno

    # a rename (an atomic write's last step) fails on its destination, the path the user named, not the temp file
    named = getattr(e, "filename2", None) or getattr(e, "filename", None)
    where = f" ({named})" if named else ""
    fixes = {
        errno.EACCES: "permission denied: choose a folder you can write to (--out) or fix its permissions",
        errno.EPERM: "operation not permitted: choose another folder (--out) or fix its permissions",
        errno.EROFS: "the file system is read-only: choose a writable folder with --out",
        errno.ENOSPC: "no space left on the disk: free space or choose another disk with --out; "
                      "what was already committed is kept and the job resumes from it",
        errno.EDQUOT: "disk quota exceeded: free space or choose another disk with --out",
        errno.ENOTDIR: "a path component is a file, not a folder: choose a folder path with --out",
        errno.EISDIR: "this path is a folder where a file was expected: give a file path",
        errno.EEXIST: "this path already exists: choose a new path or remove it",
        errno.EIO: "input/output error: the disk or file system failed; check it (dmesg) and rerun, what was "
                   "already committed is kept",
        errno.ENAMETOOLONG: "the path is too long: choose a shorter --out",
        errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
        errno.ENOMEM: "out of memory: lower --batch-size and rerun",
    }
    fix = fixes.get(e.errno) or (e.strerror or str(e))
    return f"{fix}{where}"


REPORT = "the probescope issue tracker, with the command line and the traceback"
DEBUG_ENV = "PROBESCOPE_DEBUG"


def debug_on() -> bool:
    """--debug (or PROBESCOPE_DEBUG=1): tracebacks instead of one line."""
    import os

    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def deliberate(e: BaseException) -> bool:
    """True when `e` was raised by a `raise` statement in probescope's own source: a message we wrote for the
    user. A TypeError or KeyError raised anywhere else (Python itself, a library, an expression of ours) is a bug."""
    import linecache

    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if Path(__file__).resolve().parent not in path.parents:
        return False
    return linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise")


def _user_error(e: BaseException) -> bool:
    if isinstance(e, (TypeError, KeyError)):
        return deliberate(e)
    return isinstance(e, USER_ERRORS)


def run_job(fn: Callable[[], Any]) -> Any:
    """The CLI's one error handler: run `fn`; a user error or an OS failure becomes one red line and exit code 2; an
    unexpected exception (a bug of ours) says so, where to report it, and how to see the traceback (exit code 1)."""
    try:
        return fn()
    except (typer.Exit, typer.Abort, click.ClickException, KeyboardInterrupt):
        raise
    except Exception as e:
        if debug_on():
            raise
        if not _user_error(e):
            console.print(f"[red]internal error:[/red] {type(e).__name__}: {escape(str(e))}", soft_wrap=True,
                          emoji=False)
            console.print(f"This is a bug in probescope, not a problem with your input: please report it to {REPORT}. "
                          f"Rerun with `probescope --debug ...` (or {DEBUG_ENV}=1) to see the traceback.",
                          soft_wrap=True)
            raise typer.Exit(1) from None
        if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, FileExistsError)):
            msg = _os_message(e)
        elif isinstance(e, KeyError):
            msg = f"missing key {e}"
        else:
            msg = str(e)
        # one line; brackets and ":100:"-like codes as text (rich would draw an emoji)
        console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, emoji=False)
        raise typer.Exit(2) from None


def parse_layers(text: str | None) -> list[int]:
    """'6,12' → [6, 12] (negative counts from the end); '' or None → []."""
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"layers '{text}' must be comma-separated integers, e.g. 6,12") from None


def parse_sites(text: str | None) -> list[str]:
    """'resid_post.6,attn_head.3.1' → canonical site names (a bare integer L means resid_post.L)."""
    from .core.sites import GRAMMAR, site_name

    if not text:
        return []
    try:
        return [site_name(x.strip()) for x in text.split(",") if x.strip()]
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(f"{e} ({GRAMMAR})") from None


def parse_floats(text: str) -> list[float]:
    """'-1,0,1' → [-1.0, 0.0, 1.0]."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"'{text}' must be comma-separated numbers, e.g. -1,0.5,1 (write a leading minus "
                                 "as --option=-1,0,1)") from None


def parse_names(text: str | None) -> list[str]:
    """'linear,attention' → ['linear', 'attention']."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def parse_layers_or_all(text: str | None) -> list[int] | None:
    """'6,12' → [6, 12]; '' or 'all' → None (every layer)."""
    return None if not text or text.strip() == "all" else parse_layers(text)


_LIST_PARSERS: dict[Any, Callable[[str], Any]] = {list[int]: parse_layers, list[float]: parse_floats,
                                                   tuple[float, ...]: lambda t: tuple(parse_floats(t))}
# what a field's metadata "parse" may name (a wing's config names a parser without importing the CLI)
PARSERS: dict[str, Callable[[str], Any]] = {"layers": parse_layers, "layers_or_all": parse_layers_or_all,
                                            "floats": parse_floats, "names": parse_names, "sites": parse_sites}


def _option_fields(config_cls: type, path: tuple[str, ...] = (),
                   defaults: Any = None) -> list[tuple[tuple[str, ...], Any, Any, Any]]:
    """(path, field, type, default) of every CLI option of `config_cls`; a field holding a dataclass is flattened
    into its own fields (so `TrainConfig.data.model` is `--model`), their defaults read from the outer field's
    default instance when it has one."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if not f.init or f.metadata.get("cli") is False or f.name in ("quiet", "json_out"):
            continue
        typ = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        if dataclasses.is_dataclass(typ):
            out += _option_fields(typ, path + (f.name,), None if default is ... else default)
            continue
        out.append((path + (f.name,), f, typ, default))
    return out


def _build(config_cls: type, values: dict[tuple[str, ...], Any], path: tuple[str, ...] = ()) -> Any:
    """The (possibly nested) config from option values keyed by field path."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    kw = {}
    for f in dataclasses.fields(config_cls):
        if dataclasses.is_dataclass(hints.get(f.name)) and f.init:
            kw[f.name] = _build(hints[f.name], values, path + (f.name,))
        elif path + (f.name,) in values:
            kw[f.name] = values[path + (f.name,)]
    return config_cls(**kw)


def lazy(module: str, name: str) -> Callable[[Any], Any]:
    """The wing's `module.name` run function, imported only when the command runs (the CLI stays light)."""
    def run(cfg: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(cfg)

    return run


def interrupted(out: str | Path | None, resumes: bool) -> None:
    """Ctrl-C: one line saying what was kept and the command that goes on, then exit code 130."""
    import shlex
    import sys

    again = escape("probescope " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    out = escape(str(out)) if out is not None else None
    if out is None:
        console.print(f"[yellow]interrupted:[/yellow] nothing was written; rerun `{again}` to start again", soft_wrap=True)
    elif resumes:
        console.print(f"[yellow]interrupted:[/yellow] everything committed so far is kept in {out}; rerun `{again}` "
                      "to resume from it", soft_wrap=True)
    else:
        console.print(f"[yellow]interrupted:[/yellow] {out} may hold a partial run (files already there are whole: "
                      f"each is written atomically); rerun `{again}` to redo it", soft_wrap=True)
    raise typer.Exit(130)


# what a job writes into its run folder before any work (the folder's kind, its settings, the writer's lock)
RUN_META = frozenset({"run.json", "config.json", ".lock"})


def out_state(out: str | Path | None) -> tuple[Path | None, frozenset[str]] | None:
    """What `out` holds before a job: (its topmost missing folder or None, the names in it); None without an `out`."""
    if not out:
        return None
    p = Path(out)
    if p.is_dir():
        return None, frozenset(f.name for f in p.iterdir())
    if p.exists() or p.is_symlink():
        return None
    top = p
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top, frozenset()


def _locked(lock: Path) -> bool:
    """Whether another process holds the writer's lock file `lock` (an flock) right now."""
    import fcntl

    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def undo_refused(out: str | Path | None, before: tuple[Path | None, frozenset[str]] | None) -> None:
    """After a refused job: when all it added to `out` is what a job writes before any work (RUN_META), remove that,
    and the folders made for it, so the path is as it was (`before`, from `out_state`). When it added anything
    else (a committed shard, a checkpoint) everything is kept: that work resumes."""
    if before is None or not out or not Path(out).is_dir():
        return
    top, names = before
    p = Path(out)
    try:
        added = [f for f in p.iterdir() if f.name not in names]
        if (not added and top is None) or any(not (f.is_file() and f.name in RUN_META) for f in added) \
                or _locked(p / ".lock"):
            return  # as it was, work to resume, or another job writing here right now: keep everything
        for f in added:
            f.unlink()
        while top is not None:
            p.rmdir()
            if p == top or p.parent == p:
                break
            p = p.parent
    except OSError:
        pass  # a folder someone else wrote into meanwhile: leave it


def check_options(fields: dict[str, Any], values: dict[str, Any]) -> None:
    """Check each option value as given against what its field declares (core.checks), when the config refused
    them: the message names the option as the CLI spells it (`--target`, not the field `target_agreement`), whatever
    a config's own `__post_init__` said about it. (Only then: a config may drop a value it ignores, e.g. probes'
    --task beside --data.)"""
    from .core.checks import _rule, check_field  # the one rule lookup (own metadata, else the shared name's rule)

    for name, value in values.items():
        f = fields[name]
        spelt = (f.metadata.get("flag") or "--" + name.replace("_", "-")).split(" ")[0].split("/")[0]
        check_field(spelt.lstrip("-").replace("-", "_"), value, _rule(f), f.metadata.get("help", ""))


def command_line(app: typer.Typer, name: str) -> str:
    """'probescope probe train': the command as typed, from click's context (a sub-app mounted with `add_typer`
    does not know the name it was mounted under); without a context, `app`'s own name and `name`."""
    try:  # typer carries its own copy of click (typer._click) in recent versions
        from typer._click.globals import get_current_context
    except ImportError:
        get_current_context = click.get_current_context
    ctx = get_current_context(silent=True)
    words: list[str] = []
    while ctx is not None and ctx.parent is not None:
        words.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    if not words:
        words = [w for w in (app.info.name if isinstance(app.info.name, str) else None, name) if w]
    return " ".join(["probescope", *words])


COMMANDS: dict[str, type] = {}  # every config command's dataclass, by command function name (tests walk it)


def config_command(app: typer.Typer, name: str, config_cls: type, run: Callable[[Any], Any],
                   show: Callable[[Any], None] | None = None, run_dir: Callable[[Any, Any], Any] | None = None,
                   doc: str | None = None, kind: str | None = None, resumes: bool = False) -> Callable:
    """Register `name` on `app` with one option per field of the dataclass `config_cls` (the dataclass is the CLI:
    its defaults are the options' defaults and `field(metadata={"help": ...})` their help), plus --quiet/--json.
    Metadata also takes "flag" (e.g. "--live/--no-live", or "--out -o"), "argument" (a positional argument),
    "parse" (a name in `PARSERS`, e.g. "names", or a str → value function; list[int] and list[float] fields take '6,12' by default;
    a list[str] field is a repeatable option) and
    "cli": False. A field holding a dataclass is flattened: its fields are options too.
    The command builds the config, calls `run(config)` inside the one error handler, then `finish`es the job
    (`run_dir(config, result)` names the run folder; default: the config's `out`; `show(result)`, or
    `show(result, config)` when it takes two arguments, prints the summary). With `kind`, the command
    takes --overwrite and refuses an --out that holds another kind of run before anything is written. Ctrl-C prints
    one line: what is kept and how to go on (`resumes`, or a config with a `resume` field: rerunning resumes)."""
    import inspect
    import typing

    params, annotations, parsers, paths, declared = [], {}, {}, {}, {}
    for path, f, typ, default in _option_fields(config_cls):
        pname = path[-1]
        declared[pname] = f
        if pname in paths:
            raise TypeError(f"{config_cls.__name__}: option {pname!r} is declared twice ({paths[pname]} and {path})")
        paths[pname] = path
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if typing.get_origin(typ) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
            typ = args[0] if len(args) == 1 and args[0] in _LIST_PARSERS else typing.Optional[args[0]]
        parse = f.metadata.get("parse") or _LIST_PARSERS.get(typ)
        parse = PARSERS[parse] if isinstance(parse, str) else parse
        if parse is not None:  # a comma-separated option: '6,12' → [6, 12]
            parsers[pname] = parse
            typ = typing.Optional[str]
            default = ",".join(str(x) for x in default) if isinstance(default, (list, tuple)) else default
        flag = f.metadata.get("flag") or "--" + pname.replace("_", "-")
        if f.metadata.get("argument"):
            opt = typer.Argument(default, help=f.metadata.get("help", ""))
        else:
            opt = typer.Option(default, *flag.split(" "), help=f.metadata.get("help", ""))
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ))
        annotations[pname] = typ
    if kind is not None:
        params.append(inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--overwrite", help="replace a run of another kind already at --out")))
        annotations["overwrite"] = bool
    params += [inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=QUIET, annotation=bool),
               inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=JSON, annotation=bool)]
    annotations.update(quiet=bool, json_out=bool)

    def command(**kw: Any) -> None:
        quiet, json_out = kw.pop("quiet"), kw.pop("json_out")
        overwrite = kw.pop("overwrite", False)
        def parse_all() -> None:  # inside the one error handler: a bad list is one red line, like any bad value
            for k, parse in parsers.items():
                try:
                    kw[k] = None if kw[k] is None else parse(kw[k])
                except typer.BadParameter as e:
                    raise ValueError(f"--{k.replace('_', '-')}: {e.message}") from None

        def build() -> Any:  # every declared range, before anything is loaded or written
            try:
                cfg = _build(config_cls, {paths[k]: v for k, v in kw.items()})
                check_values(cfg)
                return cfg
            except (ValueError, TypeError):
                check_options(declared, kw)  # a rule broken as typed: say so in the option's words, as spelt
                raise

        run_job(parse_all)
        with job_output(quiet, json_out):
            cfg = run_job(build)
            if kind is not None and getattr(cfg, "out", None):  # never write into another kind of run
                from .report.runs import allow_overwrite_at, check_out

                if overwrite:
                    allow_overwrite_at(cfg.out)
                run_job(lambda: check_out(cfg.out, kind, overwrite))
            if hasattr(cfg, "quiet"):  # a config that drives its own bars follows --quiet / --json
                cfg.quiet = bool(quiet or json_out)
            before = out_state(getattr(cfg, "out", None))
            try:
                from .core.progress import job_status

                label = command_line(app, name)
                with job_status(label):  # something on the terminal within a second, bars or not
                    res = run_job(lambda: run(cfg))
            except KeyboardInterrupt:
                interrupted(getattr(cfg, "out", None), resumes or hasattr(cfg, "resume"))
            except typer.Exit:  # refused: a run folder this job made holds nothing of value; leave the path as it was
                undo_refused(getattr(cfg, "out", None), before)
                raise
        folder = run_dir(cfg, res) if run_dir else getattr(cfg, "out", None)
        finish(folder, res, quiet, json_out, show=(lambda: _call_show(show, res, cfg)) if show else None)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = doc or (config_cls.__doc__ or "").strip().split("\n\n")[0]
    command.__name__ = f"{name.replace('-', '_')}_cmd"
    command.probescope_job = True  # type: ignore[attr-defined]  (tests: every job command goes through here)
    command.probescope_config = config_cls  # type: ignore[attr-defined]  (tests: the config of each command line)
    COMMANDS[f"{app.info.name or ''} {name}".strip() + f" ({config_cls.__module__}.{config_cls.__name__})"] = config_cls
    return app.command(name)(command)


def _call_show(show: Callable[..., None], result: Any, cfg: Any) -> None:
    """`show(result)`, or `show(result, cfg)` when it takes two arguments: a summary that says what was asked (the
    task, the concept, the layer as given) reads it from the config rather than from the result."""
    import inspect

    try:
        two = len(inspect.signature(show).parameters) >= 2
    except (TypeError, ValueError):
        two = False
    show(result, cfg) if two else show(result)


def _plain(v: Any) -> Any:
    """JSON-safe copy: paths as strings, NaN/inf as null, tensors and arrays as lists."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "tolist"):
        return _plain(v.tolist())
    return v


def finish(run: str | Path | None, result: Any, quiet: bool, json_out: bool,
           show: Callable[[], None] | None = None) -> Path | None:
    """End a job: render RUN/report.html, then print `result` as JSON (`--json`) or the table (`show`)."""
    from .report.runs import render_quietly

    page = None
    if run is not None and Path(run).is_dir():
        page = render_quietly(Path(run))
    if json_out:
        out = _plain(result) if isinstance(result, dict) else {"result": _plain(result)}
        if run is not None:
            out = {"run_dir": str(run), **out}
        if page is not None:
            out["report"] = str(page)
        print(json.dumps(out))
    elif not quiet:
        if show is not None:
            show()
        if page is not None:
            console.print(f"[green]report[/green] {page}")
    return page
