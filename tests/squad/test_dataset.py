"""Loading SQuAD files: nested and flattened layouts; bad input counted, reported, or a DataError."""
import json
import logging

import pytest

from groupbert.data import DataError
from groupbert.squad.dataset import load_squad
from squad_fixtures import CONTEXT_1, nested_squad, write_nested


def test_nested_layout(tmp_path):
    examples, report = load_squad(write_nested(tmp_path / "d.json"))
    assert len(examples) == report.examples == 6
    assert examples[0]["answers"] == {"text": ["Paris, France", "Paris"], "answer_start": [52, 52]}
    assert examples[0]["title"] == "Eiffel_Tower" and not report.skipped


def test_flattened_json_and_jsonl(tmp_path):
    nested, _ = load_squad(write_nested(tmp_path / "d.json"))
    (tmp_path / "flat.json").write_text(json.dumps({"data": nested}))
    (tmp_path / "flat.jsonl").write_text("\n".join(json.dumps(e) for e in nested))
    assert load_squad(str(tmp_path / "flat.json"))[0] == nested
    assert load_squad(str(tmp_path / "flat.jsonl"))[0] == nested


def test_bad_records_counted_and_logged(tmp_path, caplog):
    data = nested_squad()
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"][0]["answer_start"] += 1          # one of two references wrong: answer dropped
    qas[1]["answers"][0]["answer_start"] = 3           # the only reference wrong: question skipped
    del qas[2]["question"]                             # missing field: skipped
    with caplog.at_level(logging.WARNING):
        examples, report = load_squad(write_nested(tmp_path / "d.json", data))
    assert len(examples) == 4
    assert report.skipped == {"no answer whose answer_start matches the context": 1,
                              "missing field 'question'": 1}
    assert sum(report.dropped_answers.values()) == 2  # q1's first reference, q2's only one
    assert examples[0]["answers"]["text"] == ["Paris"]
    assert "skipped" in caplog.text and "missing field 'question'" in caplog.text


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"version": "1.1", "data": [')
    with pytest.raises(DataError, match="broken.json"):
        load_squad(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_squad(str(tmp_path / "nope.json"))


def test_nothing_usable_is_a_data_error(tmp_path):
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT_1, "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "b", "answers": [{"text": "Paris", "answer_start": 52}]}]}]}]}
    with pytest.raises(DataError, match="no usable SQuAD questions"):
        load_squad(write_nested(tmp_path / "d.json", data))
