"""Loading SQuAD files: nested and flattened layouts; bad input refused with a DataError naming it."""
import json
import logging

import pytest

from groupbert.data import DataError
from groupbert.squad.dataset import load_squad
from squad_fixtures import nested_squad, write_nested


def test_nested_layout(tmp_path):
    examples, report = load_squad(write_nested(tmp_path / "d.json"))
    assert len(examples) == report.examples == 6
    assert examples[0]["answers"] == {"text": ["Paris, France", "Paris"], "answer_start": [52, 52]}
    assert examples[0]["title"] == "Eiffel_Tower" and not report.moved_answer_starts


def test_flattened_json_and_jsonl(tmp_path):
    nested, _ = load_squad(write_nested(tmp_path / "d.json"))
    (tmp_path / "flat.json").write_text(json.dumps({"data": nested}))
    (tmp_path / "flat.jsonl").write_text("\n".join(json.dumps(e) for e in nested))
    assert load_squad(str(tmp_path / "flat.json"))[0] == nested
    assert load_squad(str(tmp_path / "flat.jsonl"))[0] == nested


def test_bad_records_refused_together(tmp_path):
    """Nothing is dropped: every bad question is named (id and JSON path) in one DataError."""
    data = nested_squad()
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas[1]["answers"][0]["answer_start"] = -5          # negative: was Python's index from the end
    del qas[2]["question"]
    with pytest.raises(DataError) as err:
        load_squad(write_nested(tmp_path / "d.json", data))
    msg = str(err.value)
    assert "d.json: 2 problems" in msg
    assert "data[0].paragraphs[0].qas[1] (article 'Eiffel_Tower'): question 'q2': answer 0: answer_start -5" in msg
    assert "qas[2] (article 'Eiffel_Tower'): question 'q3': no 'question' text" in msg


def test_shifted_answer_start_moved_and_reported(tmp_path, caplog):
    """An in-range offset off its text (bytes for characters, a stripped context) is moved to the
    nearest occurrence of the text, counted and logged, not dropped."""
    data = nested_squad()
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    with caplog.at_level(logging.WARNING):
        examples, report = load_squad(write_nested(tmp_path / "d.json", data))
    assert len(examples) == 6 and report.moved_answer_starts == 1
    assert examples[0]["answers"] == {"text": ["Paris, France", "Paris"], "answer_start": [52, 52]}
    assert "answer_start 53 -> 52" in caplog.text and report.as_dict()["moved_answer_starts"] == 1


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"version": "1.1", "data": [')
    with pytest.raises(DataError, match="broken.json"):
        load_squad(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_squad(str(tmp_path / "nope.json"))


def test_no_questions_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no SQuAD questions"):
        load_squad(write_nested(tmp_path / "d.json", {"version": "1.1", "data": []}))
