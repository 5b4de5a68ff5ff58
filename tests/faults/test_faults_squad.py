"""Bad SQuAD input is refused with exit code 2 and a message naming the file and the question, never
trained on or scored silently.

The official SQuAD v1.1 evaluation script keys references and predictions by question id, so a duplicate
id would be scored once and counted twice; a negative ``answer_start`` slices from the end of the context
and used to label the answer as [CLS]; a non-UTF-8 file used to end in a traceback (exit 1).
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from groupbert.cli import EXIT_BAD_INPUT
from groupbert.data import DataError
from groupbert.errors import BadInput
from groupbert.squad import evaluate as squad_eval
from groupbert.squad.dataset import load_squad

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was built from 1887 to 1889."
OTHER = "Mount Everest is Earth's highest mountain above sea level, on the border between Nepal and China."


def _qa(qid: str, context: str, *texts: str) -> dict:
    return {"id": qid, "question": f"question {qid}?",
            "answers": [{"text": t, "answer_start": context.index(t)} for t in texts]}


def squad() -> dict:
    """Two articles of one paragraph each; q3 has two references, as dev questions do."""
    return {"version": "1.1", "data": [
        {"title": "Eiffel_Tower", "paragraphs": [{"context": CONTEXT, "qas": [
            _qa("q1", CONTEXT, "Paris, France"), _qa("q2", CONTEXT, "from 1887 to 1889")]}]},
        {"title": "Mount_Everest", "paragraphs": [{"context": OTHER, "qas": [
            _qa("q3", OTHER, "Nepal and China", "Nepal")]}]}]}


def write(path: Path, obj: dict | list | None = None) -> str:
    path.write_text(json.dumps(squad() if obj is None else obj))
    return str(path)


def refusal(path: str, split: str = "train") -> str:
    with pytest.raises(DataError) as err:
        load_squad(path, split)
    assert isinstance(err.value, BadInput)   # run_squad.py: exit 2
    return str(err.value)


# ---------------------------------------------------------------------------------------------- ids
@pytest.mark.parametrize("split", ["train", "dev"])
def test_duplicate_ids_refused_naming_both_positions(tmp_path: Path, split: str) -> None:
    """The official evaluation keys answers by id: two questions 'q1' would be one score, two counts."""
    data = squad()
    data["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    msg = refusal(write(tmp_path / "d.json", data), split)
    assert "d.json: 1 problem" in msg
    assert ("data[1].paragraphs[0].qas[0] (article 'Mount_Everest'): question 'q1': duplicate id, first at "
            "data[0].paragraphs[0].qas[0] (article 'Eiffel_Tower')") in msg


def test_duplicate_ids_in_flattened_jsonl(tmp_path: Path) -> None:
    rows = [{"id": "a", "title": "t", "context": CONTEXT, "question": "?",
             "answers": {"text": ["Paris"], "answer_start": [CONTEXT.index("Paris")]}}] * 2
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert "line 2: question 'a': duplicate id, first at line 1" in refusal(str(path))


def test_evaluate_command_refuses_duplicate_ids_and_non_utf8(tmp_path: Path, capsys) -> None:
    """``python -m groupbert.squad.evaluate``: the official script would score the duplicate once."""
    data = squad()
    data["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"q1": "Paris", "q2": "1887"}))
    assert squad_eval.main([write(tmp_path / "dev.json", data), str(preds)]) == 2
    err = capsys.readouterr().err
    assert "dev.json" in err and "'q1' appears more than once, at data[0].paragraphs[0].qas[0] and data[1]" in err
    (tmp_path / "latin1.json").write_bytes(json.dumps(squad()).replace("Paris", "Par\u00eds").encode("latin-1"))
    assert squad_eval.main([str(tmp_path / "latin1.json"), str(preds)]) == 2
    assert "latin1.json: not UTF-8" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- answer offsets
@pytest.mark.parametrize("split", ["train", "dev"])
@pytest.mark.parametrize("start, why", [
    (-5, "answer_start -5 with a text of 13 characters is outside the context"),
    (len(CONTEXT) - 3, "is outside the context of"),
    ("52", "answer_start '52' is not an integer"),
    (52.0, "answer_start 52.0 is not an integer"),
    (True, "answer_start True is not an integer"),
    (None, "answer_start None is not an integer"),
])
def test_bad_answer_start_refused(tmp_path: Path, split: str, start, why: str) -> None:
    """A negative start used to pass ``context[start:start+len]`` from the end and label [CLS]; dev answers
    are only scored, but an offset outside the context is still bad input."""
    data = squad()
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = start
    msg = refusal(write(tmp_path / "d.json", data), split)
    assert "data[0].paragraphs[0].qas[0] (article 'Eiffel_Tower'): question 'q1': answer 0: " in msg and why in msg


def test_bad_second_dev_reference_refused(tmp_path: Path) -> None:
    data = squad()
    data["data"][1]["paragraphs"][0]["qas"][0]["answers"][1]["answer_start"] = -1
    assert "question 'q3': answer 1: answer_start -1" in refusal(write(tmp_path / "d.json", data), "dev")


def test_shifted_answer_start_moved_not_refused(tmp_path: Path) -> None:
    """Real SQuAD-format files can carry offsets off by a few characters (counted in bytes, or a stripped
    context: huggingface/datasets#2585); the text is still in the context, so the nearest occurrence is
    taken and counted instead of failing the run."""
    data = squad()
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] -= 2
    examples, report = load_squad(write(tmp_path / "d.json", data), "train")
    start = examples[0]["answers"]["answer_start"][0]
    assert CONTEXT[start:start + len("Paris, France")] == "Paris, France" and start == CONTEXT.index("Paris")
    assert report.moved_answer_starts == 1 and report.as_dict()["moved_answer_starts"] == 1


def test_text_not_in_context_refused_for_training_kept_for_scoring(tmp_path: Path) -> None:
    """A train label needs the span; the official evaluation compares dev references only as text."""
    data = squad()
    data["data"][1]["paragraphs"][0]["qas"][0]["answers"][1]["text"] = "Tibet"
    path = write(tmp_path / "d.json", data)
    assert "question 'q3': answer 1: the text 'Tibet' occurs nowhere in the context" in refusal(path, "train")
    examples, report = load_squad(path, "dev")
    assert examples[2]["answers"]["text"] == ["Nepal and China", "Tibet"] and report.answers_not_in_context == 1


# ------------------------------------------------------------------------------- file and structure
def test_non_utf8_file_refused_naming_byte_and_line(tmp_path: Path) -> None:
    text = json.dumps(squad(), indent=1).replace("Paris, France", "Par\u00eds, France")
    (tmp_path / "latin1.json").write_bytes(text.encode("latin-1"))
    msg = refusal(str(tmp_path / "latin1.json"))
    line = text[:text.index("\u00ed")].count("\n") + 1
    assert "latin1.json: not UTF-8 text (byte 0xed at offset" in msg and f"line {line})" in msg


def _drop(key: str):
    def edit(d: dict) -> None:
        del d["data"][0]["paragraphs"][0]["qas"][1][key]
    return edit


def _set(path: tuple, value):
    def edit(d: dict) -> None:
        target = d
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
    return edit


Q2 = ("data", 0, "paragraphs", 0, "qas", 1)


@pytest.mark.parametrize("edit, why", [
    (_drop("id"), "data[0].paragraphs[0].qas[1] (article 'Eiffel_Tower'): question (no id): no 'id'"),
    (_set(Q2 + ("id",), 7), "question (no id): id 7 is not a string"),
    (_drop("question"), "question 'q2': no 'question' text"),
    (_drop("answers"), "question 'q2': no 'answers'"),
    (_set(Q2 + ("answers",), []), "question 'q2': no answers"),
    (_set(Q2 + ("answers",), [{"text": "Paris"}]), "every answer must be an object with 'text' and 'answer_start'"),
    (_set(Q2 + ("answers", 0, "text"), ""), "answer 0: empty or non-text answer text ''"),
    (_set(Q2 + ("is_impossible",), True), "SQuAD v2.0 unanswerable question"),
    (_set(("data", 0, "paragraphs", 0, "context"), None), "question 'q2': no 'context' text"),
    (_set(("data", 1, "paragraphs"), None), "data[1]: an article must be an object with a 'paragraphs' list"),
    (_set(("data", 1, "paragraphs", 0), "text"), "data[1].paragraphs[0] (article 'Mount_Everest'): a paragraph"),
    (_set(Q2, "q2"), "data[0].paragraphs[0].qas[1] (article 'Eiffel_Tower'): a question must be an object"),
])
@pytest.mark.parametrize("split", ["train", "dev"])
def test_malformed_question_refused(tmp_path: Path, split: str, edit, why: str) -> None:
    data = copy.deepcopy(squad())
    edit(data)
    assert why in refusal(write(tmp_path / "d.json", data), split)


@pytest.mark.parametrize("content, why", [
    ('{"version": "1.1", "data": [', "malformed JSON at line 1 column"),
    ('{"version": "1.1", "articles": []}', "expected the SQuAD v1.1 layout"),
    ('{"version": "1.1", "data": {"title": "t"}}', "expected the SQuAD v1.1 layout"),
    ('"just a string"', "expected the SQuAD v1.1 layout"),
    ('{"version": "1.1", "data": []}', "no SQuAD questions"),
])
def test_not_a_squad_file_refused(tmp_path: Path, content: str, why: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    msg = refusal(str(tmp_path / "bad.json"))
    assert msg.startswith(str(tmp_path / "bad.json")) and why in msg


def test_every_problem_counted_and_later_ones_checked_past_max_examples(tmp_path: Path) -> None:
    """The whole file is validated even when ``max_examples`` takes only its start."""
    data = squad()
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas.extend({"id": f"x{i}", "question": "?", "answers": [{"text": "Paris", "answer_start": -1}]}
               for i in range(7))
    with pytest.raises(DataError, match=r"d.json: 7 problems .*; and 2 more$"):
        load_squad(write(tmp_path / "d.json", data), "train", max_examples=1)


# ----------------------------------------------------------------------------------- run_squad.py
def _run_squad(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    """run_squad.py on the CPU demo recipe with ``--set`` overrides, in a subprocess (exit code, stderr)."""
    args = [sys.executable, str(ROOT / "run_squad.py"), "--config", str(ROOT / "configs/squad/tiny_minilm.yaml"),
            "--quiet", "--output-dir", str(tmp_path / "run"), "--set", "train.init_checkpoint=null",
            "--set", "runtime.custom_ops=off"]   # refused at the data: no kernel build (minutes) first
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)


def _assert_refused(out: subprocess.CompletedProcess, tmp_path: Path, *expected: str) -> None:
    assert out.returncode == EXIT_BAD_INPUT, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    for text in expected:
        assert text in out.stderr
    assert not (tmp_path / "run").exists()   # refused before the run directory is made


def test_cli_non_utf8_file_exits_2(tmp_path: Path) -> None:
    """Exit 2 with the file named, as run_pretraining.py does for an undecodable corpus (the dev file is
    read first, so the refusal comes quickest; a bad train file takes the same path)."""
    text = json.dumps(squad()).replace("Paris, France", "Par\u00eds, France")
    (tmp_path / "dev.json").write_bytes(text.encode("latin-1"))
    out = _run_squad(tmp_path, f"squad.dev_file={tmp_path / 'dev.json'}")
    _assert_refused(out, tmp_path, f"error: {tmp_path / 'dev.json'}: not UTF-8 text (byte 0xed")


def test_cli_duplicate_dev_ids_exit_2(tmp_path: Path) -> None:
    data = squad()
    data["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    out = _run_squad(tmp_path, f"squad.dev_file={write(tmp_path / 'dev.json', data)}")
    _assert_refused(out, tmp_path, f"error: {tmp_path / 'dev.json'}: 1 problem", "question 'q1': duplicate id",
                    "data[0].paragraphs[0].qas[0]")
