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
