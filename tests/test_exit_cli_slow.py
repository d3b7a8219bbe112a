"""The early-exit chain from the command line on the real models: the reasoner and the two shipped models.

collect → train → calibrate → eval → run, at toy sizes (4 problems per split, 24 reasoning tokens), so the
test checks that every step runs on each real architecture (llama with and without the reasoner adapter,
Gemma 3 with its sliding-window layers and few-shot prompt) and writes what it should. The savings at full
size are measured in bench/early_exit.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app

torch.set_num_threads(1)


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("model,layer", [("smollm2-135m-reasoner", 24), ("smollm2-135m", 20), ("gemma3-270m", 6)])
def test_exit_cli_chain_on_real_models(tmp_path, model, layer):
    r = CliRunner()
    col, probe, ev, live = (str(tmp_path / n) for n in ("col", "probe", "eval", "run"))
    out = _json(r.invoke(app, ["exit", "collect", "--model", model, "--out", col, "--n-train", "8", "--n-val", "4",
                               "--n-test", "4", "--layers", str(layer), "--max-new-tokens", "24", "--batch-size", "8",
                               "--stride", "8", "--json"]))
    assert {k: v["n"] for k, v in out["splits"].items()} == {"train": 8, "val": 4, "test": 4}
    out = _json(r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "2", "--n-heads", "2", "--json"]))
    assert out["chosen"] == layer
    out = _json(r.invoke(app, ["exit", "calibrate", "--collect", col, "--probe", probe, "--rule", "empirical",
                               "--target", "0.5", "--json"]))
    assert out["n"] == 4 and 0.0 <= out["tau"] <= 1.0
    out = _json(r.invoke(app, ["exit", "eval", "--collect", col, "--probe", probe, "--out", ev, "--no-live",
                               "--rule", "empirical", "--target", "0.5", "--json"]))
    assert out["n_test"] == 4 and {"probe", "forced_answer", "oracle"} <= set(out["methods"])
    assert all(0.0 <= m["agreement"] <= 1.0 for m in out["methods"].values() if "agreement" in m)
    q = "Tom has 2 apples and buys 3 more. How many apples does he have?\n(A) 4\n(B) 5\n(C) 6\n(D) 1"
    out = _json(r.invoke(app, ["exit", "run", q, "--model", model, "--probe", probe, "--tau", "0.9",
                               "--max-new-tokens", "16", "--out", live, "--json"]))
    assert out["answer"] in "ABCD" and 0 <= out["reasoning_tokens"] <= 16
    assert (tmp_path / "run" / "report.html").exists()
