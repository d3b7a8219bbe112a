"""What a user sees on a terminal (#36): a job shows a line as soon as it starts (the runner's status line, then
its bars), well before its result, and nothing of it under --quiet. Run in a real pseudo-terminal: rich draws
live displays only on a terminal, so a pipe would hide exactly what is checked here. `patch` and `steer icl`
were the silent ones (minutes with nothing on screen)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")


def run_in_tty(args: list[str], cwd, timeout: float = 240) -> list[tuple[float, bytes]]:
    """Run `python -m probescope ARGS` on a pseudo-terminal; (seconds since start, bytes) per chunk read."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("PROBESCOPE_QUIET",)}
    env.update(COLUMNS="160", LINES="40", TERM="xterm-256color", PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "probescope", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append((time.monotonic() - t0, data))
            elif proc.poll() is not None:
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                pytest.fail(f"{args} ran over {timeout} s")
    finally:
        os.close(master)
    assert proc.wait() == 0, b"".join(c for _, c in chunks).decode(errors="replace")[-3000:]
    return chunks


@pytest.fixture
def pairs(tmp_path):
    data = tmp_path / "pairs.jsonl"  # tiny-llama's byte tokenizer: one-character answers are one token
    rows = [{"clean": "ab cd ab x", "corrupt": "ab cd cd x", "answer": "q", "wrong": "z"},
            {"clean": "ef gh ef y", "corrupt": "ef gh gh y", "answer": "q", "wrong": "z"}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return data


def _first_seen(chunks, needle: bytes) -> float | None:
    seen = b""
    for t, c in chunks:
        seen += c
        if needle in seen:
            return t
    return None


def test_patch_shows_a_status_line_before_its_result(tmp_path, pairs):
    chunks = run_in_tty(["patch", "--model", "tiny-llama", "--task", str(pairs), "--families", "resid_pre,attn_head",
                         "--out", str(tmp_path / "run")], cwd=tmp_path)
    started = _first_seen(chunks, b"probescope patch")
    done = _first_seen(chunks, b"report")
    assert started is not None, "nothing named the running job"
    assert done is not None and started < done, (started, done)


def test_a_cold_start_says_so_within_two_seconds(tmp_path, pairs):
    """A fresh `python -m probescope patch …` on a terminal names the job before torch and transformers are imported
    (they take seconds on a busy machine); the job's own status line then takes its place."""
    chunks = run_in_tty(["patch", "--model", "tiny-llama", "--task", str(pairs), "--families", "resid_pre",
                         "--method", "exact", "--out", str(tmp_path / "run")], cwd=tmp_path)
    early = _first_seen(chunks, b"probescope patch: starting")
    assert early is not None and early < 2.0, (early, chunks[:3])
    status = _first_seen(chunks, b"probescope patch (started)") or _first_seen(chunks, b"report")
    assert status is not None and status > early


def test_the_early_line_is_only_for_jobs():
    from probescope.launch import early_line

    assert early_line(["probescope", "probe", "train", "--layer", "3"]).startswith("probescope probe train: starting")
    assert early_line(["probescope", "patch", "--model", "x"]).startswith("probescope patch: starting")
    for argv in (["probescope"], ["probescope", "--help"], ["probescope", "patch", "--help"],
                 ["probescope", "patch", "--quiet"], ["probescope", "exit", "run", "--json"]):
        assert early_line(argv) is None, argv


def test_quiet_shows_nothing(tmp_path, pairs):
    chunks = run_in_tty(["patch", "--model", "tiny-llama", "--task", str(pairs), "--families", "resid_pre",
                         "--out", str(tmp_path / "run"), "--quiet"], cwd=tmp_path)
    text = b"".join(c for _, c in chunks).decode(errors="replace")
    assert "probescope patch" not in text and "report" not in text, text[-2000:]


# commands that are not jobs: they list, print or check something in a moment and show it at once
NOT_JOBS = {("models",), ("demo",), ("report",), ("store", "verify"), ("data", "list"), ("data", "show"),
            ("probe", "tasks")}


def test_every_job_command_goes_through_the_runner():
    """The status line (and the checks, the --out rule, Ctrl-C, the bug message) come from `config_command`: every
    command of the CLI but the few that are not jobs must be registered through it, so none can be silent."""
    import typer

    import probescope.cli as cli

    leaves = {}

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))
        else:
            leaves[path] = cmd

    walk(typer.main.get_command(cli.app), ())
    assert len(leaves) >= 30
    outside = [" ".join(p) for p, c in leaves.items()
               if p not in NOT_JOBS and not getattr(c.callback, "probescope_job", False)]
    assert not outside, f"job commands not registered through clikit.config_command: {outside}"


# -----------------------------------------------------------------------------------------------------------------
# every job command (#36): its status line within seconds
# -----------------------------------------------------------------------------------------------------------------

SHOWN_WITHIN_S = 10.0  # from the start of the command to its line on the terminal, on a busy 2-core machine
PARALLEL = 4


def _start_in_tty(argv: list[str], cwd) -> tuple[int, int]:
    """Fork this process (probescope already imported: the interpreter's start and `import probescope` are not
    counted) with a new pseudo-terminal as the child's stdin, stdout and stderr, where the child runs
    `probescope ARGV`: (pid, the terminal's master fd)."""
    import probescope.cli as pcli
    from probescope.core import progress

    pid, fd = pty.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.chdir(cwd)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.environ.pop("PROBESCOPE_QUIET", None)
            os.environ.update(COLUMNS="200", LINES="40", TERM="xterm-256color", TOKENIZERS_PARALLELISM="false")
            progress.QUIET = False
            pcli.app(argv, prog_name="probescope")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001  (shown on the terminal, read by the parent)
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid, fd


def _stop(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def test_every_job_command_shows_its_line_within_seconds(tmp_path):
    """Each job command of the CLI (the walk of tests/test_refusals.py, the same set as `clikit.COMMANDS`; a new
    command without quick arguments in its QUICK table fails here) is started on its own pseudo-terminal with quick
    valid arguments on the tiny llama HF folder; the line `probescope <command>` must show within SHOWN_WITHIN_S,
    then the job is killed (it need not finish). The line names the command as typed: `probescope probe train`,
    not `probescope train`."""
    from test_refusals import JOBS, QUICK, tiny_inputs

    assert not [c for c in JOBS if c not in QUICK], "add quick arguments for the new command to QUICK"
    inputs = tiny_inputs(tmp_path)
    pending, running, shown, seen = sorted(JOBS), {}, {}, {}
    limit = SHOWN_WITHIN_S + 5
    while pending or running:
        while pending and len(running) < PARALLEL:
            command = pending.pop(0)
            cwd = tmp_path / "cwd" / command.replace(" ", "-")
            cwd.mkdir(parents=True)
            argv = [*command.split(), *(a.format(**inputs) for a in QUICK[command])]
            pid, fd = _start_in_tty(argv, cwd)
            running[fd] = (command, pid, time.monotonic(), bytearray())
        ready, _, _ = select.select(list(running), [], [], 0.1)
        for fd in list(running):
            command, pid, t0, buf = running[fd]
            ended = False
            if fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    data = b""
                buf += data
                ended = not data
            if f"probescope {command}".encode() in buf and command not in shown:
                shown[command] = time.monotonic() - t0
            if command in shown or ended or time.monotonic() - t0 > limit:
                _stop(pid)
                os.close(fd)
                del running[fd]
                seen[command] = bytes(buf).decode(errors="replace")
    late = {c: round(shown[c], 1) if c in shown else seen[c][-600:] for c in JOBS
            if shown.get(c, limit) > SHOWN_WITHIN_S}
    print(f"status lines shown {min(shown.values()):.1f}..{max(shown.values()):.1f} s after each command started")
    assert not late, late


def test_off_a_terminal_a_long_bar_writes_plain_lines(monkeypatch, capsys):
    """Off a terminal (pytest's captured stderr, like a log file) rich would draw nothing until the end: a bar that
    runs longer than LOG_SECONDS writes `desc: n/total (p%) rate unit/s elapsed eta` lines, then a last line at its
    end; a bar that ends sooner writes nothing, and quiet writes nothing."""
    import probescope.core.progress as pg

    monkeypatch.setattr(pg, "QUIET", False)
    monkeypatch.setattr(pg, "LOG_SECONDS", 0.05)
    with pg.progress(4, "training", unit="step") as bar:
        for _ in range(4):
            time.sleep(0.06)
            bar.advance()
            bar.note(fvu=0.21)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("training: 1/4 (25%)") and " step/s" in lines[0]
    assert "eta" in lines[0] and lines[-1].startswith("training: 4/4 (100%)") and "eta" not in lines[-1]
    assert lines[-1].endswith("fvu 0.21")
    monkeypatch.setattr(pg, "LOG_SECONDS", 10.0)
    with pg.progress(4, "quick") as bar:
        bar.advance(4)
    with pg.progress(4, "hushed", quiet=True) as bar:
        time.sleep(0.06)
        bar.advance(4)
    assert capsys.readouterr().err == ""
