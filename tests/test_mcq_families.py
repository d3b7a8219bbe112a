"""The varied task and its held-out families (issue #19): disjointness, balance, traces, unchanged defaults."""

import random
import re
from collections import Counter
from dataclasses import replace

import pytest

from probescope.exit.answer import ANSWER_CUE
from probescope.tasks import mcq


def test_default_output_unchanged():
    # the original task draws exactly as before (the first test problem of seed 0 is the one in docs/reasoner.md)
    p = mcq.generate("test", 1, seed=0)[0]
    assert p.question == "A jar holds 47 buttons. Zoe takes out 35. How many buttons stay in the jar?"
    assert p.options == ("12", "22", "14", "82") and p.letter == "A" and p.family == "arith/sub/b1"
    assert {q.kind for q in mcq.generate("train", 100, seed=0)} == {"arith", "convert"}
    assert all(q.family.split("/")[-1].startswith("b") for q in mcq.generate("train", 100, seed=0))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_varied_never_yields_held_out_families(split):
    probs = mcq.generate(split, 400, seed=1, varied=True)
    assert not any(p.held_out for p in probs)
    assert {p.kind for p in probs} == set(mcq.VARIED_KINDS)
    assert len({p.family for p in probs}) >= 50  # many phrasings


def test_held_out_only_held_out_families_and_no_train_split():
    probs = mcq.generate("test", 300, seed=0, held_out=True)
    assert all(p.held_out for p in probs)
    assert {p.kind for p in probs} == set(mcq.ALL_KINDS)  # includes the held-out kind
    train_fams = {p.family for p in mcq.generate("train", 1500, seed=0, varied=True)}
    assert not train_fams & {p.family for p in probs}
    assert not {p.question for p in mcq.generate("train", 1500, seed=0, varied=True)} & {p.question for p in probs}
    with pytest.raises(ValueError, match="no train split"):
        mcq.generate("train", 4, held_out=True)
    with pytest.raises(ValueError, match="held out"):
        mcq.generate("train", 4, kinds=("distance",), varied=True)


@pytest.mark.parametrize("kw", [{"varied": True}, {"held_out": True}])
def test_letters_balanced(kw):
    probs = mcq.generate("val", 200, seed=2, **kw)
    assert Counter(p.letter for p in probs) == {L: 50 for L in mcq.LETTERS}
    for i in range(0, 200, 4):
        assert {p.letter for p in probs[i: i + 4]} == set(mcq.LETTERS)


def test_every_family_renders_a_valid_trace():
    probs = mcq.generate("train", 1500, seed=0, varied=True) + mcq.generate("test", 600, seed=0, held_out=True)
    fams = {}
    for p in probs:
        fams.setdefault(p.family, p)
    # every template of every kind was drawn
    assert len(fams) == sum(len(b) + len(e) + len(h) for b, e, h in mcq.ARITH_TEMPLATES.values()) + \
        len(mcq.CONVERT_TEMPLATES) + len(mcq.CONVERT_EXTRA) + len(mcq.CONVERT_HELD) + \
        sum(len(t) + len(h) for t, h in mcq.MONEY_TEMPLATES.values()) + \
        sum(len(t) + len(h) for t, h in mcq.TIME_TEMPLATES.values()) + \
        sum(len(t) + len(h) for t, h in mcq.TWOSTEP_TEMPLATES.values()) + \
        sum(len(x) for x in mcq.COMPARE_TEMPLATES) + sum(len(x) for x in mcq.PERCENT_TEMPLATES) + \
        len(mcq.DISTANCE_TEMPLATES)
    for fam, p in fams.items():
        assert "{" not in p.question and "}" not in p.question, fam
        assert len(set(p.options)) == 4 and p.options[p.answer] == p.result and all(int(o) > 0 for o in p.options)
        r = mcq.reasoning(p)
        assert mcq.trace(p) == r + ANSWER_CUE + p.letter + ")"
        assert f"({p.letter}) {p.result} yes." in r and r.count("Check:") == 2
        assert r.rfind("Check:") > mcq.settle_char(p)
        assert f"= {p.result}." in "\n".join(p.work)
        free = mcq.as_free(p)
        assert mcq.trace(free).endswith(f"\nAnswer: {p.result}") and "Options:" not in mcq.trace(free)


def test_work_arithmetic_is_right():
    import re

    for p in mcq.generate("val", 300, seed=4, varied=True) + mcq.generate("val", 200, seed=4, held_out=True):
        for line in (*p.work, *p.checks):
            for a, op, b, c in re.findall(r"(\d+) ([-+×÷]) (\d+) = (\d+)", line):
                a, b, c = int(a), int(b), int(c)
                assert {"+": a + b, "-": a - b, "×": a * b, "÷": a / b}[op] == c, (p.question, line)


def test_held_out_file_for_exit_collect(tmp_path):
    # bench/early_exit.py writes the held-out families as a --data file; it reads back as val/test problems
    import importlib.util
    from pathlib import Path

    from probescope.tasks.problem_file import read_problem_file

    spec = importlib.util.spec_from_file_location("bench_ee", Path(__file__).resolve().parents[1] / "bench" / "early_exit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.write_held_out_file(tmp_path / "h.jsonl", 12, 8)
    splits = read_problem_file(path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [0, 12, 8]
    want = mcq.generate("test", 8, 0, held_out=True)
    assert [(p.question, p.options, p.letter) for p in splits["test"]] == [(p.question, p.options, p.letter) for p in want]


def test_wide_adds_trained_phrasings_only():
    probs = mcq.generate("train", 600, seed=5, wide=True)
    fams = {p.family for p in probs}
    assert any("/w" in f for f in fams) and not any(p.held_out for p in probs)
    assert len(fams) > len({p.family for p in mcq.generate("train", 600, seed=5, varied=True)})
    assert Counter(p.letter for p in probs) == {L: 150 for L in mcq.LETTERS}
    # no wide phrasing is a held-out one, and the held-out problems do not depend on the wide pool
    held = {t for _, _, held in mcq.ARITH_TEMPLATES.values() for t in held}
    assert not held & {t for ts in mcq.WIDE_TEMPLATES.values() for t in ts}
    assert "distance/mul" not in mcq.WIDE_TEMPLATES
    with pytest.raises(ValueError, match="held_out"):
        mcq.generate("test", 4, wide=True, held_out=True)


@pytest.mark.parametrize("wrong_op", [0.0, 1.0])
def test_with_retry_fails_first_then_works_again(wrong_op):
    import random

    rng = random.Random(0)
    probs = mcq.generate("train", 60, seed=2, wide=True)
    made = [q for q in (mcq.with_retry(p, rng, wrong_op=wrong_op) for p in probs) if q is not None]
    assert len(made) >= 50
    for q in made:
        text = mcq.reasoning(q)
        first, scan, note = q.retry[-3], q.retry[-2], q.retry[-1]
        w = first.rsplit("= ", 1)[1].rstrip(".")
        assert w not in q.options and w != q.result and int(w) > 0
        assert scan.count(" no.") == 4 and "yes" not in scan
        assert note == f"No option is {w}, so that step was wrong. Work it again."
        assert text.startswith("\n".join(q.retry) + "\n" + "\n".join(q.work))
        # the settle point is the correct option's "yes." in the second scan, after the failed attempt
        assert text[: mcq.settle_char(q)].endswith(f"({q.letter}) {q.options[q.answer]} yes.")
        assert mcq.settle_char(q) > len("\n".join(q.retry))
        assert mcq.trace(q).endswith(f"{mcq.ANSWER_PREFIX}{q.letter})")
    if wrong_op == 1.0:  # one-operation problems get a different operation first
        ops = [q for q in made if len(q.work) == 2]
        assert sum(q.retry[1].split(" ")[1] != q.work[1].split(" ")[1] for q in ops) >= len(ops) // 2
    assert mcq.with_retry(mcq.as_free(probs[0]), rng) is None


def test_with_retry_twice_takes_the_closest_option():
    import random

    rng = random.Random(1)
    made = [q for q in (mcq.with_retry(p, rng, twice=True) for p in mcq.generate("train", 60, seed=3, wide=True))
            if q is not None]
    assert len(made) >= 40
    for q in made:
        text = mcq.reasoning(q)
        assert text.count("Work it again.") == 1 and text.count(" no.") == 8 and " yes." not in text
        w2 = int(q.retry[-3].rsplit("= ", 1)[1].rstrip("."))
        dist = sorted((abs(int(o) - w2), i) for i, o in enumerate(q.options))
        assert dist[0][1] == q.answer and dist[0][0] < dist[1][0]  # the right option is the unique closest
        assert q.retry[-1] == f"No option is {w2} either, so we take the closest option: ({q.letter}) {q.result}."
        assert text[: mcq.settle_char(q)].endswith(q.retry[-1])
        assert mcq.trace(q).endswith(f"{mcq.ANSWER_PREFIX}{q.letter})")


def test_with_retry_twice_with_distances_written_out():
    import random

    rng = random.Random(2)
    made = [q for q in (mcq.with_retry(p, rng, twice=True, distances=True)
                        for p in mcq.generate("train", 40, seed=4, wide=True)) if q is not None]
    assert len(made) >= 30
    for q in made:
        w2 = int(q.retry[-3].rsplit("= ", 1)[1].rstrip("."))
        far = {L: abs(int(o) - w2) for L, o in zip(mcq.LETTERS, q.options)}
        for L, o in zip(mcq.LETTERS, q.options):
            assert f"({L}) {o} is {far[L]} away" in q.retry[-1]
        assert min(far, key=far.get) == q.letter and sorted(far.values())[0] < sorted(far.values())[1]
        assert q.retry[-1].endswith(f"So we take the closest option: ({q.letter}) {q.result}.")
        assert mcq.trace(q).endswith(f"{mcq.ANSWER_PREFIX}{q.letter})")
    assert max(abs(int(q.retry[-3].rsplit("= ", 1)[1].rstrip(".")) - int(q.result)) for q in made) > 2


def test_with_retry_twice_takes_the_option_ending_in_the_same_digit():
    rng = random.Random(3)
    probs = mcq.generate("train", 200, seed=6, wide=True)
    made = [(p, mcq.with_retry(p, rng, twice=True, last_digit=True)) for p in probs]
    assert sum(q is not None for _, q in made) >= 50
    for p, q in made:
        shared = [o for i, o in enumerate(p.options) if i != p.answer and int(o) % 10 == int(p.result) % 10]
        if q is None:  # only when another option ends in the same digit (or no miss is left)
            continue
        assert not shared and q.takes_closest
        w2 = int(q.retry[-3].rsplit("= ", 1)[1].rstrip("."))
        assert w2 != int(q.result) and (w2 - int(q.result)) % 10 == 0 and str(w2) not in q.options
        d = int(q.result) % 10
        assert q.retry[-1] == (f"No option is {w2} either. Only {q.result} ends in {d} like {w2}, so we take that "
                               f"option: ({q.letter}) {q.result}.")
        assert [o for o in q.options if int(o) % 10 == w2 % 10] == [q.result]  # the rule picks the right option
        text = mcq.reasoning(q)
        assert text.count("Work it again.") == 1 and " yes." not in text
        assert text[: mcq.settle_char(q)].endswith(q.retry[-1])
        assert mcq.trace(q).endswith(f"{mcq.ANSWER_PREFIX}{q.letter})")
    # a problem whose distractor ends in the same digit as the answer gets no such trace
    clash = next(p for p in probs if any(i != p.answer and int(o) % 10 == int(p.result) % 10
                                         for i, o in enumerate(p.options)))
    assert mcq.with_retry(clash, random.Random(0), twice=True, last_digit=True) is None


def test_value_scan_reads_options_smallest_first():
    base = mcq.generate("train", 200, seed=5, wide=True)
    for p in base[:50]:
        q = mcq.with_scan(p, "value")
        assert q.scan == "value" and p.scan == "letters"
        scan = next(line for line in mcq.reasoning(q).split("\n") if line.startswith("Options"))
        assert scan.startswith("Options, smallest first: ")
        read = [int(x) for x in re.findall(r"\) (\d+) (?:no|yes)\.", scan)]
        assert read == sorted(read) and read[-1] == int(q.result) and scan.endswith(f"({q.letter}) {q.result} yes.")
        assert mcq.reasoning(q)[: mcq.settle_char(q)].endswith(f"({q.letter}) {q.result} yes.")
        assert mcq.trace(q).endswith(f"Answer: ({q.letter})")
        # the default scan is unchanged: A to D, stopping at the match
        assert "Options: (A)" in mcq.reasoning(p)
    # when nothing matches, the last option read (the largest) is not always D: its letter is near uniform
    last = Counter()
    rng = random.Random(0)
    for p in base:
        r = mcq.with_retry(mcq.with_scan(p, "value"), rng)
        if r is None:
            continue
        scan = next(line for line in r.retry if line.startswith("Options"))
        assert scan.count(" no.") == 4 and "yes" not in scan
        last[scan.rsplit("(", 1)[1][0]] += 1
    n = sum(last.values())
    assert n >= 150 and set(last) == set(mcq.LETTERS) and max(last.values()) / n < 0.35, last
    with pytest.raises(ValueError, match="unknown scan order 'sorted'"):
        mcq.with_scan(base[0], "sorted")


@pytest.mark.parametrize("repeat,double", [(False, False), (True, False), (False, True), (True, True)])
def test_with_switch_names_the_wrong_operation_and_tries_another(repeat, double):
    rng = random.Random(4)
    probs = mcq.generate("train", 200, seed=7, wide=True)
    made = [(p, mcq.with_switch(p, rng, repeat=repeat, double=double)) for p in probs]
    got = [(p, q) for p, q in made if q is not None]
    assert len(got) >= (40 if double else 150)
    names = {v: k for k, v in mcq.OP_NAMES.items()}
    for p, q in got:
        assert q.work == p.work and q.options == p.options and not q.takes_closest
        text = mcq.reasoning(q)
        # every tried operation is written out, wrong ones on the last line's two numbers, and none is an option
        tried = re.findall(r"^(?:.*?)(\d+) ([-+×]) (\d+) = (\d+)\.$", "\n".join(q.retry), flags=re.M)
        a, op, b = re.match(r"^.*?(\d+) ([-+×÷]) (\d+) = \d+\.$", p.work[-1]).groups()
        assert len(tried) == 1 + repeat + double
        for x, o, y, w in tried:
            assert (x, y) == (a, b) and o != op and w not in p.options and int(w) > 0
            assert int(w) == {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[o]
        assert len({o for _, o, _, _ in tried}) == 1 + double  # a repeat is word for word; a double tries both
        assert text.count(" no.") == 4 * len(tried) + q.answer and text.count(" yes.") == 1
        assert ("Work it again." in text) == repeat
        switch = re.findall(r"so (\w+) is wrong(?: too)?\. Try (\w+) instead\.", text)
        assert len(switch) == 1 + double and names[switch[-1][1]] == op  # the last switch names the right operation
        assert [names[w] for w, _ in switch] == [o for _, o, _, _ in tried][repeat:]
        # after the switch come the problem's own work and a scan that ends on the right option
        assert text.startswith("\n".join(q.retry) + "\n" + "\n".join(p.work))
        assert text[: mcq.settle_char(q)].endswith(f"({q.letter}) {q.result} yes.")
        assert mcq.settle_char(q) > len("\n".join(q.retry))
        assert mcq.trace(q).endswith(f"{mcq.ANSWER_PREFIX}{q.letter})")
    # one-line work or a free-form problem has no wrong operation to switch from
    assert mcq.with_switch(mcq.as_free(probs[0]), rng) is None
    assert mcq.with_switch(replace(probs[0], work=probs[0].work[-1:]), rng) is None


def test_with_switch_inline_writes_each_sum_on_the_switch_line():
    rng = random.Random(5)
    probs = mcq.generate("train", 200, seed=7, wide=True)
    got = [(p, q) for p, q in ((p, mcq.with_switch(p, rng, repeat=i % 2 == 1, double=i % 3 == 0, inline=True))
                               for i, p in enumerate(probs)) if q is not None]
    assert len(got) >= 100
    for p, q in got:
        a, op, b, r = re.match(r"^.*?(\d+) ([-+×÷]) (\d+) = (\d+)\.$", p.work[-1]).groups()
        assert q.work == (f"Try {mcq.OP_NAMES[op]} instead: {a} {op} {b} = {r}.",)  # the sum replaces the work
        assert q.retry[-1].endswith(" is wrong.") or q.retry[-1].endswith(" is wrong too.")
        for line in [x for x in q.retry if x.startswith("Try ")]:  # a wrong switch: the sum on the same line
            name, x, o, y, w = re.match(r"^Try (\w+) instead: (\d+) ([-+×]) (\d+) = (\d+)\.$", line).groups()
            assert mcq.OP_NAMES[o] == name and (x, y) == (a, b) and w not in q.options and o != op
        text = mcq.reasoning(q)
        assert " instead." not in text and text.count(" yes.") == 1
        assert text[: mcq.settle_char(q)].endswith(f"({q.letter}) {q.result} yes.")
        assert mcq.trace(q).endswith(f"{mcq.ANSWER_PREFIX}{q.letter})")
    assert any(len([x for x in q.retry if x.startswith("Try ")]) == 1 for _, q in got)  # some doubles
    # without inline the same problem keeps its own work lines after the switch
    p = got[0][0]
    plain = mcq.with_switch(p, random.Random(0))
    assert plain.work == p.work and plain.retry[-1].endswith(" instead.")
