"""n-best post-processing on hand-made logits."""
import numpy as np

from groupbert.squad.features import Features
from groupbert.squad.postprocess import nbest_spans, postprocess_predictions

CONTEXT = "alpha beta gamma delta"
#          0     6    11    17


def _features(offsets_per_feature, example_index):
    n, T = len(offsets_per_feature), len(offsets_per_feature[0])
    z = np.zeros((n, T), dtype=np.int64)
    return Features(z, z, z + 1, np.asarray(example_index), np.asarray(offsets_per_feature, dtype=np.int64),
                    np.zeros(n, np.int64), np.zeros(n, np.int64))


# tokens: [CLS] q [SEP] alpha beta gamma delta [SEP]
OFFSETS = [(-1, -1), (-1, -1), (-1, -1), (0, 5), (6, 10), (11, 16), (17, 22), (-1, -1)]


def test_best_valid_span():
    start = np.array([9.0, 8, 0, 0, 5, 0, 0, 7])   # CLS / question / SEP are never chosen
    end = np.array([9.0, 0, 0, 0, 0, 4, 0, 9])
    ex = [{"id": "a", "context": CONTEXT}]
    preds, nbest = postprocess_predictions(ex, _features([OFFSETS], [0]), start[None], end[None])
    assert preds == {"a": "beta gamma"}
    # Hugging Face run_qa's n-best: the best candidates over all windows, a softmax over their scores;
    best = nbest["a"]
    # valid spans: starts alpha..delta x ends at or after them: 4 + 3 + 2 + 1 = 10 candidates
    assert best[0]["text"] == "beta gamma" and len(best) == 10
    assert (best[0]["start_logit"], best[0]["end_logit"]) == (5.0, 4.0)
    scores = np.array([b["start_logit"] + b["end_logit"] for b in best])
    assert np.all(np.diff(scores) <= 0)
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose([b["probability"] for b in best], expected)
    assert abs(sum(b["probability"] for b in best) - 1) < 1e-12


def test_end_before_start_and_max_length():
    start = np.array([0, 0, 0, 0, 0, 0, 9.0, 0])   # best start at "delta"
    end = np.array([0, 0, 0, 8.0, 0, 0, 1.0, 0])   # best end before it -> invalid
    cands = nbest_spans(start, end, np.asarray(OFFSETS), n_best=20, max_answer_length=30)
    assert (cands[0][1], cands[0][2]) == (6, 6)
    start = np.array([0, 0, 0, 9.0, 0, 0, 0, 0])
    end = np.array([0, 0, 0, 0, 0, 0, 9.0, 0])     # alpha..delta is 4 tokens
    cands = nbest_spans(start, end, np.asarray(OFFSETS), n_best=20, max_answer_length=3)
    assert all(e - s + 1 <= 3 for _, s, e in cands)
    assert (cands[0][1], cands[0][2]) != (3, 6)


def test_best_over_windows_and_empty():
    w0 = [(-1, -1), (-1, -1), (0, 5), (6, 10), (-1, -1)]
    w1 = [(-1, -1), (-1, -1), (6, 10), (11, 16), (-1, -1)]
    start = np.array([[0, 0, 1.0, 0, 0], [0, 0, 0, 6.0, 0]])
    end = np.array([[0, 0, 1.0, 0, 0], [0, 0, 0, 6.0, 0]])
    ex = [{"id": "a", "context": CONTEXT}, {"id": "b", "context": CONTEXT}]
    feats = _features([w0, w1], [0, 0])              # example b has no features at all
    preds, nbest = postprocess_predictions(ex, feats, start, end)
    assert preds == {"a": "gamma", "b": ""}
    assert nbest["a"][0] == {"text": "gamma", "probability": nbest["a"][0]["probability"], "start_logit": 6.0,
                             "end_logit": 6.0}
    assert nbest["b"] == [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]
