import json

import pytest

from probescope.core.data import data_hash, default_corpus, read_texts


def test_readers(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    (tmp_path / "a.csv").write_text("id,text\n1,one\n2,\"two, with comma\"\n")
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond\n")
    assert read_texts(tmp_path / "a.jsonl") == ["one", "two"]
    assert read_texts(tmp_path / "a.csv") == ["one", "two, with comma"]
    assert read_texts(tmp_path / "a.txt") == ["first paragraph\nstill first", "second"]


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        read_texts(tmp_path / "bad.jsonl")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="no 'text' field"):
        read_texts(tmp_path / "nofield.jsonl")
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'text' column"):
        read_texts(tmp_path / "nocol.csv")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no texts"):
        read_texts(tmp_path / "empty.txt")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="cannot read"):
        read_texts(tmp_path / "x.parquet")


def test_default_corpus_is_stable_and_sizeable():
    a, b = default_corpus(), default_corpus()
    assert a == b and len(a) > 300 and sum(map(len, a)) > 100_000
    assert data_hash(list(a)) == data_hash(list(b)) and data_hash(["x"]) != data_hash(["y"])
