"""The early-exit chain from the command line on a tiny model: collect → train → calibrate → eval → run.

Each step writes its run folder and page; `--json` prints one object. The tiny model's reasoning is noise, so
the test checks the plumbing (files, fields, splits), not the savings (those are measured in bench/early_exit.py).
"""

import json

from typer.testing import CliRunner

from probescope.cli import app


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_exit_cli_chain(tmp_path):
    r = CliRunner()
    col, probe, ev, live = (str(tmp_path / n) for n in ("col", "probe", "eval", "run"))
    out = _json(r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--out", col, "--n-train", "8", "--n-val", "8",
                               "--n-test", "8", "--layers", "1,2", "--max-new-tokens", "12", "--batch-size", "8",
                               "--stride", "4", "--json"]))
    assert {k: v["n"] for k, v in out["splits"].items()} == {"train": 8, "val": 8, "test": 8}
    assert (tmp_path / "col" / "report.html").exists()

    out = _json(r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "3", "--n-heads", "2",
                               "--json"]))
    assert out["chosen"] in (1, 2) and set(out["scores"]) == {"1", "2"}
    assert "Probe validation loss by layer" in (tmp_path / "probe" / "report.html").read_text()

    out = _json(r.invoke(app, ["exit", "calibrate", "--collect", col, "--probe", probe, "--rule", "empirical",
                               "--target", "0.5", "--json"]))
    assert out["n"] == 8 and out["rule"] == "empirical"  # calibrated on the 8 val problems, never the test ones
    assert json.loads((tmp_path / "probe" / "calibration.json").read_text())["tau"] == out["tau"]

    out = _json(r.invoke(app, ["exit", "eval", "--collect", col, "--probe", probe, "--out", ev, "--no-live",
                               "--rule", "empirical", "--target", "0.5", "--json"]))
    assert {"probe", "forced_answer", "budget", "oracle", "full"} <= set(out["methods"])
    assert out["n_test"] == 8 and (tmp_path / "eval" / "report.html").exists()

    q = "Tom has 2 apples and buys 3 more. How many apples does he have?\n(A) 4\n(B) 5\n(C) 6\n(D) 1"
    out = _json(r.invoke(app, ["exit", "run", q, "--model", "tiny-llama", "--probe", probe, "--tau", "0.3",
                               "--max-new-tokens", "8", "--out", live, "--json"]))
    assert out["answer"] in "ABCD" and out["stop"] in ("exit", "max_tokens", "eos", "answer_line")
    assert 0 <= out["reasoning_tokens"] <= 8
    assert "probe belief per option" in (tmp_path / "run" / "report.html").read_text()

    res = r.invoke(app, ["exit", "train", "--collect", str(tmp_path / "nope"), "--out", probe])
    assert res.exit_code == 2 and "nope" in res.output


def test_exit_commands_are_their_configs():
    """Each `exit` command is its config dataclass: every field (but `quiet`) is an option, same defaults."""
    import dataclasses

    import typer.main

    from probescope.exit.calibrate import CalibrateConfig
    from probescope.exit.collect import CollectConfig
    from probescope.exit.evaluate import EvalConfig
    from probescope.exit.live import RunConfig
    from probescope.exit.train import TrainConfig

    group = typer.main.get_command(app).commands["exit"]
    for name, cls in (("collect", CollectConfig), ("train", TrainConfig), ("calibrate", CalibrateConfig),
                      ("eval", EvalConfig), ("run", RunConfig)):
        params = {p.name: p for p in group.commands[name].params}
        for f in dataclasses.fields(cls):
            if f.name != "quiet":
                assert f.name in params, (name, f.name)
        assert {"quiet", "json_out"} <= set(params)
    eval_opts = {o for p in group.commands["eval"].params for o in [*p.opts, *p.secondary_opts]}
    assert {"--target", "--live", "--no-live", "--threads", "--n-live", "--overwrite"} <= eval_opts


def test_exit_bad_options_are_one_line_errors_before_work(tmp_path):
    r = CliRunner()
    res = r.invoke(app, ["exit", "calibrate", "--rule", "bogus", "--collect", str(tmp_path / "none")])
    assert res.exit_code == 2 and "--rule 'bogus' is not one of crc, ucb, empirical" in res.output
    res = r.invoke(app, ["exit", "eval", "--mode", "guess", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "--mode 'guess' is not one of probe, forced" in res.output and not (tmp_path / "e").exists()
    res = r.invoke(app, ["exit", "collect", "--n-val", "-1", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--n-val -1 is out of range: it must be ≥ 0" in " ".join(res.output.split())


def test_run_functions_apply_and_restore_threads(tmp_path, monkeypatch):
    """The Python API applies `threads` for the job and restores torch's count after it."""
    import torch

    from probescope.exit import collect as col_mod
    from probescope.exit.collect import CollectConfig, run_collect

    seen = []
    monkeypatch.setattr(col_mod, "_collect", lambda cfg, job, splits, how, quiet: seen.append(torch.get_num_threads())
                        or {"done": True})
    before = torch.get_num_threads()
    assert run_collect(CollectConfig(threads=1, n_train=8, n_val=1, n_test=1)) == {"done": True}
    assert seen == [1] and torch.get_num_threads() == before
