"""What a job says at its end (#36): a summary in the user's words, not a number dump. For fast commands of several
wings on the tiny llama, the terminal summary names what was asked (the task, concept, data or site) and prints no
number with more than 4 decimals (0.34297911950614446 is what a raw float looks like; 0.34 is a summary)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")

LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{5,}(?![\w.])")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from test_refusals import small_inputs

    root = tmp_path_factory.mktemp("summaries")
    return {"root": root, **{k: Path(v) for k, v in small_inputs(root).items()}}


# (command line, what the summary must name); {root} {pairs} {patch} {text} from `inputs`; run in this order
CASES = [
    (["cache", "--model", "tiny-llama", "--data", "{text}", "--layers", "1", "--context-len", "16", "--max-tokens",
      "64", "--out", "{root}/cache"], ["layers [1]", "tokens"]),
    (["patch", "--model", "tiny-llama", "--task", "{patch}", "--families", "resid_pre,attn_head", "--out",
      "{root}/patch"], ["patch.jsonl", "of the gap", "resid_pre", "attn_head"]),
    (["probe", "train", "--model", "tiny-llama", "--n", "10", "--layer", "1", "--out", "{root}/probe"],
     ["'truth'", "linear probe", "layer 1", "AUROC"]),
    (["probe", "sweep", "--model", "tiny-llama", "--n", "10", "--layers", "1", "--out", "{root}/sweep"],
     ["'truth'", "best"]),
    (["sae", "train", "--model", "tiny-llama", "--data", "{text}", "--layer", "1", "--tokens", "512", "--batch-size",
      "64", "--context-len", "16", "--expansion", "2", "--k", "4", "--out", "{root}/sae"],
     ["residual stream after block 1", "variance unexplained"]),
    (["sae", "eval", "--sae", "{root}/sae"], ["held-out tokens", "never fire"]),
    (["steer", "make", "--model", "tiny-llama", "--pairs", "{pairs}", "--layers", "1", "--n-pairs", "2", "--out",
      "{root}/vec"], ["pairs.jsonl", "layers [1]"]),
    (["steer", "eval", "--vector", "{root}/vec", "--n-prompts", "2", "--n-neutral", "2", "--max-new-tokens", "2",
      "--out", "{root}/veval"], ["sentiment", "neutral text"]),
    (["train", "--model", "tiny-llama", "--layer", "1", "--n-train", "8", "--n-eval", "4", "--max-steps", "1",
      "--out", "{root}/train"], ["pirate-arith", "held-out questions"]),
    (["manifold", "find", "--model", "tiny-llama", "--layers", "1", "--n", "28", "--out", "{root}/mfind"],
     ["days", "manifold"]),
    (["circuit", "transcoders", "--model", "tiny-llama", "--tokens", "512", "--batch-size", "64", "--context-len",
      "16", "--expansion", "2", "--k", "4", "--out", "{root}/tc"], ["MLPs of 4 layers", "held-out tokens"]),
]


def test_job_summaries_name_the_question_and_round_their_numbers(inputs):
    import probescope.cli as pcli

    cli = typer.main.get_command(pcli.app)
    wings = set()
    for argv, named in CASES:
        args = [a.format(**inputs) for a in argv]
        r = CliRunner().invoke(cli, args, env={"COLUMNS": "400"})
        shown = r.output
        assert r.exit_code == 0, f"{' '.join(argv[:2])}: {shown[-2000:]}"
        summary = "\n".join(line for line in shown.splitlines()
                            if line.strip() and not line.startswith(("report ", "/")) and "Warning" not in line)
        assert summary, f"{' '.join(argv[:2])} printed no summary"
        raw = LONG_FLOAT.findall(summary)
        assert not raw, f"{' '.join(argv[:2])} prints unrounded numbers {raw}:\n{summary}"
        missing = [w for w in named if w not in summary]
        assert not missing, f"{' '.join(argv[:2])}: the summary does not say {missing}:\n{summary}"
        wings.add(argv[0])
    assert len(wings) >= 6
