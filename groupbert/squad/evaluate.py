"""The official SQuAD v1.1 evaluation: exact match and token F1, max over the reference answers.

Same semantics as "Official evaluation script for v1.1 of the SQuAD dataset" (rajpurkar.github.io,
reproduced in huggingface/evaluate ``metrics/squad/compute_score.py``): answers are normalised by
lower-casing, removing every ``string.punctuation`` character, dropping the articles a/an/the and
collapsing whitespace; F1 is over whitespace tokens of the normalised strings; an empty prediction
scores 0 (the v1.1 script, unlike transformers' v2.0 ``compute_f1``); unanswered questions score 0.

    python -m groupbert.squad.evaluate DATASET.json PREDICTIONS.json   # prints {"exact_match", "f1"}

The command exits with 2, naming the file, where the official script would raise or mis-score: a file
that is not UTF-8 or not JSON, a dataset outside the v1.1 layout, a question without references, or a
question id that appears twice (the official script keys references by id and would score it once).
"""
from __future__ import annotations

import argparse
import json
import re
import string
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """lower -> strip punctuation -> drop a/an/the -> collapse whitespace (the official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gt_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(gt_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gt_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], float], prediction: str,
                                  ground_truths: Iterable[str]) -> float:
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def score(references: dict[str, list[str]], predictions: dict[str, str], warn=None) -> dict:
    """EM and F1 in percent over every question in ``references`` (id -> reference texts)."""
    em = f1 = 0.0
    for qid, answers in references.items():
        if qid not in predictions:
            if warn is not None:
                warn(f"Unanswered question {qid} will receive score 0.")
            continue
        em += metric_max_over_ground_truths(exact_match_score, predictions[qid], answers)
        f1 += metric_max_over_ground_truths(f1_score, predictions[qid], answers)
    total = max(len(references), 1)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def evaluate(dataset: list, predictions: dict[str, str], warn=None) -> dict:
    """The official ``evaluate(dataset, predictions)``: ``dataset`` is the ``data`` list of a v1.1 file.
    A question id that appears twice is a :class:`DataError`: the official script keys references by id,
    so it would score the question once and silently drop the other."""
    references: dict[str, list[str]] = {}
    first_at: dict[str, str] = {}
    for a, article in enumerate(dataset):
        for p, paragraph in enumerate(article["paragraphs"]):
            for q, qa in enumerate(paragraph["qas"]):
                qid, where = qa["id"], f"data[{a}].paragraphs[{p}].qas[{q}]"
                if qid in references:
                    raise _data_error(f"question id {qid!r} appears more than once, at {first_at[qid]} and {where}: "
                                    f"ids must be unique to be scored")
                references[qid], first_at[qid] = [ans["text"] for ans in qa["answers"]], where
                if not references[qid]:
                    raise _data_error(f"question {qid!r} ({where}) has no reference answers to score against")
    return score(references, predictions, warn)


def _data_error(message: str) -> Exception:
    """A ``DataError`` (exit 2), imported only when needed: the metric itself imports nothing of groupbert."""
    from groupbert.data.errors import DataError
    return DataError(message)


def _read_json(path: str):
    """A UTF-8 JSON file, or ValueError naming it (not UTF-8, malformed) / OSError."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluation for SQuAD 1.1 (official semantics)", allow_abbrev=False)
    p.add_argument("dataset_file", help="SQuAD v1.1 JSON (nested official layout)")
    p.add_argument("prediction_file", help="JSON object: question id -> answer text")
    args = p.parse_args(argv)
    try:
        dataset_json = _read_json(args.dataset_file)
        predictions = _read_json(args.prediction_file)
        if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get("data"), list):
            raise ValueError(f"{args.dataset_file}: not the SQuAD v1.1 layout {{'version', 'data': [articles]}}")
        if not isinstance(predictions, dict):
            raise ValueError(f"{args.prediction_file}: expected a JSON object of question id -> answer text")
        if dataset_json.get("version") != "1.1":
            print(f"Evaluation expects v-1.1, but got dataset with v-{dataset_json.get('version')}",
                  file=sys.stderr)
        try:
            result = evaluate(dataset_json["data"], predictions, warn=lambda m: print(m, file=sys.stderr))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{args.dataset_file}: not the SQuAD v1.1 layout (articles of paragraphs of "
                             f"questions with id and answers): {type(e).__name__} {e}") from None
        except ValueError as e:   # a duplicate id (DataError)
            raise ValueError(f"{args.dataset_file}: {e}") from None
    except (OSError, ValueError) as e:   # each message names its file
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
