"""Start/end logits of every window -> answers per question (HF ``utils_qa.postprocess_qa_predictions``, v1).

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
                            with_offsets: bool = False) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """(question id -> answer text, question id -> its ``n_best`` answers) over every example (features may
    hold several windows per example). The n-best lists are Hugging Face ``run_qa.py``'s
    ``nbest_predictions.json``: text, probability (a softmax over the listed answers' scores) and the
    start and end logits, best first; an example without a valid span gets the empty answer.
    ``with_offsets`` adds each answer's ``start`` and ``end`` character offsets in the context (the
    fields of HF's question-answering pipeline; 0, 0 for the empty answer)."""
    by_example = defaultdict(list)
    for f, ex_idx in enumerate(features.example_index):
        by_example[int(ex_idx)].append(f)
    predictions, nbest = {}, {}
    for i, ex in enumerate(examples):
        candidates = []   # (score, feature, start, end), in feature order: ties keep the earlier window
        for f in by_example.get(i, []):
            for score, s, e in nbest_spans(start_logits[f], end_logits[f], features.offsets[f], n_best,
                                           max_answer_length):
                candidates.append((score, f, s, e))
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[:n_best]
        if not candidates:
            predictions[ex["id"]] = ""
            nbest[ex["id"]] = [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0,
                                **({"start": 0, "end": 0} if with_offsets else {})}]
            continue
        scores = np.array([c[0] for c in candidates])
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        entries = []
        for (score, f, s, e), p in zip(candidates, probs):
            offsets = features.offsets[f]
            entries.append({"text": ex["context"][offsets[s][0]:offsets[e][1]], "probability": float(p),
                            "start_logit": float(start_logits[f][s]), "end_logit": float(end_logits[f][e])})
            if with_offsets:
                entries[-1].update(start=int(offsets[s][0]), end=int(offsets[e][1]))
        predictions[ex["id"]] = entries[0]["text"]
        nbest[ex["id"]] = entries
    return predictions, nbest


def write_predictions(predictions: dict, path: str | Path) -> None:
    """``predictions.json`` / ``nbest_predictions.json``: JSON keyed by question id."""
    Path(path).write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
