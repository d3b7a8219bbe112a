"""Your own problems for early exit (`exit collect --data FILE`): JSONL/CSV reading, splits, bad input, and the
collect → train → eval chain on tiny-llama with the file's problems."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from probescope.cli import app
from probescope.tasks.problem_file import read_problem_file, read_problem_splits, split_counts

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n: int, split: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        a, b = i + 2, i % 5 + 1
        opts = [str(a + b), str(a + b + 1), str(a * b + 7), str(a + b + 3)]
        k = i % 4
        opts[0], opts[k] = opts[k], opts[0]
        row = {"question": f"Sam has {a} pens and gets {b} more. How many pens now? ({i})", "options": opts,
               "answer": "ABCD"[k] if i % 2 else opts[k]}
        if split:
            row["split"] = "train" if i < n - 4 else ("val" if i < n - 2 else "test")
        out.append(row)
    return out


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: "|".join(v) if isinstance(v, list) else v for k, v in r.items()})
    return path


def test_jsonl_and_csv_read_the_same_problems(tmp_path):
    rows = _rows(20)
    a = read_problem_file(_jsonl(tmp_path / "p.jsonl", rows), 8, 6, 6, seed=1)
    b = read_problem_file(_csv(tmp_path / "p.csv", rows), 8, 6, 6, seed=1)
    assert {k: len(v) for k, v in a.items()} == {"train": 8, "val": 6, "test": 6}
    assert [(p.question, p.options, p.answer) for s in a.values() for p in s] == \
        [(p.question, p.options, p.answer) for s in b.values() for p in s]
    for p in (p for s in a.values() for p in s):  # letters and option texts both name the right option
        i = int(p.question.rsplit("(", 1)[1][:-1])
        assert p.letter == "ABCD"[i % 4] and p.result == rows[i]["options"][i % 4]
    c = read_problem_file(_jsonl(tmp_path / "p.jsonl", rows), 8, 6, 6, seed=2)
    assert [p.id for p in c["val"]] != [p.id for p in a["val"]]  # the seed draws the split


def test_split_column_is_kept_and_counts_take_its_first_rows(tmp_path):
    p = _jsonl(tmp_path / "p.jsonl", _rows(14, split=True))
    s = read_problem_file(p)
    assert {k: len(v) for k, v in s.items()} == {"train": 10, "val": 2, "test": 2}
    s, how = read_problem_splits(p, 8, None, 1)
    assert [q.id for q in s["train"]] == [f"train-file-{i:05d}" for i in range(1, 9)]  # the first 8, file order
    assert {k: len(v) for k, v in s.items()} == {"train": 8, "val": 2, "test": 1} and "3 rows unused" in how
    with pytest.raises(ValueError, match=r"has 10/2/2 \(train/val/test\) rows, fewer than --n-val 5 asks"):
        read_problem_file(p, None, 5, None)
    assert split_counts(10, [160, 100, 50]) == [5, 3, 2] and split_counts(3, [1, 1, 1]) == [1, 1, 1]


def test_counts_are_counts_and_a_small_file_works_without_them(tmp_path):
    """#36: with --data, --n-* are counts (not proportions); left out, the rows are shared 160/100/50 with at least
    8 train and 1 val problem, so 12 rows work by default; too few rows name the numbers and the fix."""
    p = _jsonl(tmp_path / "p.jsonl", _rows(20))
    s, how = read_problem_splits(p, 8, 2, 2)
    assert {k: len(v) for k, v in s.items()} == {"train": 8, "val": 2, "test": 2} and "(8 rows unused)" in how
    s, how = read_problem_splits(p, 12, None, None)  # the rest shared by val and test, 100:50
    assert {k: len(v) for k, v in s.items()} == {"train": 12, "val": 5, "test": 3}
    s, how = read_problem_splits(_jsonl(tmp_path / "s.jsonl", _rows(12)))
    assert {k: len(v) for k, v in s.items()} == {"train": 8, "val": 3, "test": 1}
    assert how == "12 rows drawn by seed 0: 8/3/1 (train/val/test), split in the shares 160/100/50 (train at least 8)"
    assert {k: len(v) for k, v in read_problem_file(_jsonl(tmp_path / "n.jsonl", _rows(9))).items()} == \
        {"train": 8, "val": 1, "test": 0}
    with pytest.raises(ValueError, match=r"12 rows but --n-train 160 --n-val 100 --n-test 50 ask for 310: give "
                                         r"counts that add up to at most 12, or leave them out"):
        read_problem_file(tmp_path / "s.jsonl", 160, 100, 50)
    with pytest.raises(ValueError, match=r"has 7 rows: too few for the 8 train problems `exit train` fits the probe "
                                         r"on plus 1 val problem.*a file of 10 splits 8/1/1"):
        read_problem_file(_jsonl(tmp_path / "t.jsonl", _rows(7)))
    with pytest.raises(ValueError, match=r"train split has 5 problems \(12 rows drawn by seed 0: 5/4/3 .*from the "
                                         r"counts given\).*at least 8"):
        read_problem_file(tmp_path / "s.jsonl", 5, 4, 3)
    val_only = read_problem_file(tmp_path / "s.jsonl", 0, 6, 6)  # a collect for a probe trained elsewhere
    assert {k: len(v) for k, v in val_only.items()} == {"train": 0, "val": 6, "test": 6}


def test_collect_on_a_small_file_by_default_says_how_it_split_it(tmp_path):
    """The issue's case on the CLI: 12 rows and no counts collect 8/3/1 and the summary says so; the old default
    counts on 12 rows are refused with the numbers written as numbers (no ':100:' emoji) and nothing written."""
    data = _jsonl(tmp_path / "p.jsonl", _rows(12))
    r = CliRunner()
    res = r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "c"),
                         "--layers", "1", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "train 8" in text and "val 3" in text and "test 1" in text
    assert "12 rows drawn by seed 0: 8/3/1 (train/val/test)" in text
    res = r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "d"),
                         "--n-train", "160", "--n-val", "100", "--n-test", "50"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "ask for 310" in text and "💯" not in text and not (tmp_path / "d").exists()
    res = r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--n-train", "5", "--out", str(tmp_path / "e")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--n-train 5 is out of range: it must be ≥ 8 (or 0)" in text and "at least 8" in text


@pytest.mark.parametrize("content,needles", [
    ("", ["holds no rows", "one problem a row"]),
    ('{"text": "hi", "answer": "A"}\n', ["no 'question' field", "found: answer, text", "'question'"]),
    ('{"question": "q", "options": ["1", "2"], "answer": "7"}\n', ["row 1", "answer '7'", "letter A-B",
                                                                  "['1', '2']", "exact text"]),
    ('{"question": "q", "options": ["1", "2"], "answer": "C"}\n', ["answer 'C'", "letter A-B"]),
    ('{"question": "q", "options": ["1","2","3","4","5"], "answer": "A"}\n', ["5 options", "at most 4"]),
    ('{"question": "q", "answer": "A"}\n', ["has no options", "'a|b|c' in CSV"]),
    ('{"question": "q", "options": ["1", "2"], "answer": "A", "split": "dev"}\n', ["split 'dev'", "train, val, test"]),
])
def test_bad_files_name_the_value_and_the_fix(tmp_path, content, needles):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(ValueError) as e:
        read_problem_file(p, 1, 0, 0)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_too_small_splits_are_refused(tmp_path):
    p = _jsonl(tmp_path / "p.jsonl", _rows(2))
    with pytest.raises(ValueError, match="has 2 rows but --n-train 1 --n-val 1 --n-test 1 ask for 3"):
        read_problem_file(p, 1, 1, 1)
    rows = _rows(9, split=True)  # 5 train rows: fewer than the probe trainer needs
    with pytest.raises(ValueError, match=r"train split has 5 problems \(its split column\).*at least 8"):
        read_problem_file(_jsonl(tmp_path / "s.jsonl", rows))
    rows = _rows(12, split=True)
    rows[3]["question"] = rows[-1]["question"]
    with pytest.raises(ValueError, match="in the train and the test split"):
        read_problem_file(_jsonl(tmp_path / "d.jsonl", rows))


def test_collect_train_eval_on_a_file(tmp_path):
    """The CLI chain on tiny-llama with problems from a CSV: collected with their splits; eval runs live on them."""
    data = _csv(tmp_path / "p.csv", _rows(14, split=True))
    col, probe, ev = (str(tmp_path / n) for n in ("col", "probe", "eval"))
    r = CliRunner()
    res = r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--data", str(data), "--out", col, "--layers", "1",
                         "--max-new-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {k: v["n"] for k, v in out["splits"].items()} == {"train": 10, "val": 2, "test": 2}
    rows = json.loads((tmp_path / "col" / "collect.json").read_text())["rows"]
    assert all("Sam has" in r["prompt"] and r["id"].startswith(r["split"]) for r in rows)
    res = r.invoke(app, ["exit", "train", "--collect", col, "--out", probe, "--max-epochs", "2", "--json"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["exit", "eval", "--collect", col, "--probe", probe, "--out", ev, "--rule", "empirical",
                         "--target", "0.5", "--max-new-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["live"]["n"] == 2 and out["methods"]["full"]["n"] == 2
    assert "drift" in out["live"]  # the live run's drift check against the val calibration (6 tokens: too few checks)
    res = r.invoke(app, ["exit", "collect", "--model", "tiny-llama", "--data", str(tmp_path / "none.csv"),
                         "--out", str(tmp_path / "c2")])
    assert res.exit_code == 2 and "none.csv" in res.output and not (tmp_path / "c2").exists()


def test_error_lines_print_colon_codes_as_text(capsys):
    """A message holding '160:100:50' is printed as written: rich's ':100:' emoji code is not drawn (#36 item 5)."""
    import typer

    from probescope.clikit import run_job

    def bad():
        raise ValueError("the train split has 6 problems (proportions 160:100:50)")

    with pytest.raises(typer.Exit):
        run_job(bad)
    err = " ".join(capsys.readouterr().err.split())
    assert "proportions 160:100:50" in err and "💯" not in err, err
