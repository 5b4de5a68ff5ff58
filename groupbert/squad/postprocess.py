"""Start/end logits of every window -> one answer text per question (HF ``utils_qa.postprocess_qa_predictions``, v1).

For each feature the ``n_best`` highest start and end logits are paired; a pair counts when both tokens
lie in the context, ``end >= start`` and the span is at most ``max_answer_length`` tokens; its score is
``start_logit + end_logit``. The best pair over all windows of a question gives the answer, cut from the
context by the tokens' character offsets. A question with no valid pair gets the empty answer.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from groupbert.squad.features import Features


def nbest_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, n_best: int = 20,
                max_answer_length: int = 30) -> list[tuple[float, int, int]]:
    """Valid (score, start token, end token) candidates of one feature, best first."""
    starts = np.argsort(start_logits)[-1:-n_best - 1:-1]
    ends = np.argsort(end_logits)[-1:-n_best - 1:-1]
    out = []
    for s in starts:
        if offsets[s][0] < 0:
            continue
        for e in ends:
            if offsets[e][0] < 0 or e < s or e - s + 1 > max_answer_length:
                continue
            out.append((float(start_logits[s] + end_logits[e]), int(s), int(e)))
    out.sort(key=lambda t: -t[0])
    return out[:n_best]


def postprocess_predictions(examples: list[dict], features: Features, start_logits: np.ndarray,
                            end_logits: np.ndarray, n_best: int = 20, max_answer_length: int = 30,
                            ) -> dict[str, str]:
    """Question id -> answer text, for every example (features may hold several windows per example)."""
    by_example = defaultdict(list)
    for f, ex_idx in enumerate(features.example_index):
        by_example[int(ex_idx)].append(f)
    predictions = {}
    for i, ex in enumerate(examples):
        best = None
        for f in by_example.get(i, []):
            cands = nbest_spans(start_logits[f], end_logits[f], features.offsets[f], n_best, max_answer_length)
            if cands and (best is None or cands[0][0] > best[0]):
                best = (cands[0][0], f, cands[0][1], cands[0][2])
        if best is None:
            predictions[ex["id"]] = ""
        else:
            _, f, s, e = best
            offsets = features.offsets[f]
            predictions[ex["id"]] = ex["context"][offsets[s][0]:offsets[e][1]]
    return predictions


def write_predictions(predictions: dict[str, str], path: str | Path) -> None:
    Path(path).write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
