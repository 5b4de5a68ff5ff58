"""The official SQuAD v1.1 metric on hand-checked cases."""
import json
import subprocess
import sys

import pytest

from groupbert.squad.evaluate import evaluate, exact_match_score, f1_score, normalize_answer, score


def test_normalisation_order():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"          # articles only as whole words
    assert normalize_answer("  ") == ""


def test_exact_match_ignores_articles_and_punctuation():
    assert exact_match_score("the Denver Broncos", "Denver Broncos")
    assert exact_match_score("Denver Broncos.", "denver broncos")
    assert not exact_match_score("Broncos", "Denver Broncos")


def test_f1_hand_checked():
    # pred {denver, broncos, team}, truth {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    # repeated tokens count with multiplicity: pred "x b b" vs "b": num_same 1, P 1/3, R 1
    assert f1_score("x b b", "b") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_empty_prediction_scores_zero():
    assert f1_score("", "Denver Broncos") == 0.0
    assert not exact_match_score("", "Denver Broncos")
    assert f1_score("the", "a") == 0.0   # both normalise to empty: v1.1 gives 0 (transformers' v2 gives 1)


def test_max_over_references_and_unanswered():
    refs = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Santa Clara, California"], "q3": ["1887"]}
    preds = {"q1": "Broncos", "q2": "Santa Clara"}
    out = score(refs, preds)
    # q1: EM 1, F1 1; q2: EM 0, F1 = 2*1*(2/3)/(1+2/3) = 0.8; q3 unanswered: 0
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * 1.8 / 3)


def test_official_script_example_and_cli(tmp_path):
    # The Super Bowl 50 question of the dev set with its three references.
    dataset = {"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [{
        "context": "... Denver Broncos defeated the Carolina Panthers ...",
        "qas": [{"id": "56be4db0acb8001400a502ec", "question": "Which NFL team won Super Bowl 50?",
                 "answers": [{"text": "Denver Broncos", "answer_start": 4}] * 3}]}]}]}
    preds = {"56be4db0acb8001400a502ec": "the Denver Broncos."}
    assert evaluate(dataset["data"], preds) == {"exact_match": 100.0, "f1": 100.0}
    (tmp_path / "d.json").write_text(json.dumps(dataset))
    (tmp_path / "p.json").write_text(json.dumps({"56be4db0acb8001400a502ec": "Carolina Panthers"}))
    out = subprocess.run([sys.executable, "-m", "groupbert.squad.evaluate", str(tmp_path / "d.json"),
                          str(tmp_path / "p.json")], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"exact_match": 0.0, "f1": 0.0}
