"""The data registry (tasks/registry.py): every set makes n records, the same for one seed; unknown names, bad
options and duplicate names are refused by name; `probescope data list | show`."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from probescope.tasks import registry
from probescope.tasks.registry import Registry, get_set, list_sets, make
from probescope.tasks.show import plain

NAMES = [s.name for s in list_sets()]
# what the issue names, each behind the registry (probing: truth/sentiment/topic)
EXPECTED = {"mcq", "pirate", "entities", "truth", "truth-heldout", "sentiment", "topic", "icl", "ioi", "canaries",
            "sentiment-pairs"}


def test_every_named_set_is_registered():
    assert EXPECTED <= set(NAMES)
    assert len(NAMES) == len(set(NAMES))
    for s in list_sets():
        assert s.description and "\n" not in s.description and s.record


@pytest.mark.parametrize("name", NAMES)
def test_a_set_makes_n_records_the_same_for_a_seed(name):
    a = make(name, 12, seed=3)
    assert len(a) == 12
    assert plain(make(name, 12, seed=3)) == plain(a)
    json.dumps(plain(a))  # every record is plain JSON data
    assert make(name, 0, seed=3) == []
    if get_set(name).seeded:
        assert plain(make(name, 12, seed=4)) != plain(a)


def test_records_are_the_generators_own():
    """The registry is a view on the wings' generators: the same texts for the same seed."""
    from probescope.patching.tasks import ioi_texts
    from probescope.probes.tasks import TASKS
    from probescope.steering.pairs import sentiment_pairs
    from probescope.tasks import mcq, pirate

    assert [tuple(r.values()) for r in make("ioi", 7, seed=2)] == ioi_texts(7, 2)
    assert make("mcq", 9, seed=1, split="val", varied=True) == mcq.generate("val", 9, 1, varied=True)
    texts, labels, domains = TASKS["topic"].generate(5, random.Random(8))
    assert [(r["text"], r["label"], r["domain"]) for r in make("topic", 10, seed=8)] == list(zip(texts, labels, domains))
    assert [(r["positive"], r["negative"]) for r in make("sentiment-pairs", 4, seed=1)] == sentiment_pairs(None, 4, 1)
    train, _ = pirate.splits(6, 2, seed=5)
    assert [r["messages"] for r in make("pirate", 6, seed=5)] == pirate.examples(train, pirate=True, seed=5)


def test_canaries_with_a_tokenizer_are_the_organisms(tiny_models):
    from probescope.curvature.organism import canaries

    tok = tiny_models["tiny-llama"][1]
    recs = make("canaries", 5, seed=1, tokenizer=tok, prefix_tokens=6, suffix_tokens=10)
    assert [r["ids"] for r in recs] == canaries(tok, 5, 6, 10, 1)
    assert all(len(r["ids"]) == 16 and r["key"].endswith("record:") for r in recs)


def test_icl_prompts_end_in_the_query():
    for r in make("icl", 5, seed=0, task="past", shots=3):
        assert r["prompt"].endswith(f"{r['query']} ->") and len(r["shots"]) == 3
        assert r["query"] not in [x for x, _ in r["shots"]]


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown data set 'iio'.*did you mean 'ioi'") as e:
        make("iio", 3, 0)
    for name in NAMES:  # the list comes from the registry itself
        assert name in str(e.value)


def test_bad_n_and_options_are_refused_by_name():
    with pytest.raises(ValueError, match="n=-1"):
        make("ioi", -1, 0)
    with pytest.raises(ValueError, match="no option 'splt'.*split='train'"):
        make("mcq", 3, 0, splt="val")
    with pytest.raises(ValueError, match="made 40 records where 41 were asked"):
        make("cloze-antonyms", 41, 0)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'ioi' is already registered"):
        registry.register("ioi", "another", "dict")
    assert len(list_sets()) == len(NAMES)  # nothing was added
    reg = Registry()

    @reg.register("twice", "a test set", "int")
    def _twice(n, seed):
        return list(range(seed, seed + n))

    assert reg.make("twice", 3, 5) == [5, 6, 7]
    with pytest.raises(ValueError, match="'twice' is already registered \\(a test set\\)"):
        reg.register("twice", "again", "int")
    with pytest.raises(TypeError, match="must take \\(n, seed"):
        reg.register("other", "bad signature", "int")(lambda count, s: [])


def test_cli_lists_and_shows():
    from probescope.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["data", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in json.loads(res.stdout)["sets"]] == NAMES
    res = runner.invoke(app, ["data", "show", "ioi", "--n", "3", "--seed", "0"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert lines == make("ioi", 3, 0)
    res = runner.invoke(app, ["data", "show", "icl", "--n", "2", "--option", "task=plural", "--option", "shots=2"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x) for x in res.stdout.strip().splitlines()] == make("icl", 2, 0, task="plural", shots=2)
    res = runner.invoke(app, ["data", "show", "nope"])
    assert res.exit_code == 2 and "unknown data set 'nope'" in res.output
    res = runner.invoke(app, ["data", "show", "mcq", "--option", "split"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
