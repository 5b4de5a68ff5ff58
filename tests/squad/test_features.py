"""Windows, offsets and labels: answers at window edges, answers outside every window -> [CLS]."""
import pytest

from groupbert.data import load_wordpiece
from groupbert.squad.features import build_features, window_starts

from squad_fixtures import CONTEXT_1


@pytest.fixture(scope="module")
def tok():
    return load_wordpiece()


def _example(question, context, answer, start=None):
    start = context.index(answer) if start is None else start
    return {"id": "x", "question": question, "context": context,
            "answers": {"text": [answer], "answer_start": [start]}}


def test_window_starts_overlap_by_stride():
    assert window_starts(10, 10, 3) == [0]
    assert window_starts(11, 10, 3) == [0, 7]          # second window re-reads 3 tokens
    assert window_starts(25, 10, 3) == [0, 7, 14, 21]
    with pytest.raises(ValueError):
        window_starts(20, 5, 5)


def test_windows_match_tokenizers_overflow(tok):
    """Our windows equal the fast tokenizer's ``only_second`` overflow with the same stride (HF run_qa)."""
    q = "Who designed the tower?"
    f = build_features([_example(q, CONTEXT_1, "Gustave Eiffel")], tok, seq_len=24, doc_stride=5,
                       max_query_length=64, training=False)
    ref = tok.__class__.from_str(tok.to_str())
    ref.enable_truncation(24, stride=5, strategy="only_second")
    enc = ref.encode(q, CONTEXT_1)
    windows = [enc] + list(enc.overflowing)
    assert len(windows) == len(f)
    for i, w in enumerate(windows):
        n = int(f.attention_mask[i].sum())
        assert f.input_ids[i][:n].tolist() == w.ids
        assert f.token_type_ids[i][:n].tolist() == w.type_ids


def test_labels_and_offsets_round_trip(tok):
    ex = _example("Who designed the tower?", CONTEXT_1, "Gustave Eiffel")
    f = build_features([ex], tok, seq_len=32, doc_stride=8, max_query_length=64, training=True)
    labelled = [i for i in range(len(f)) if f.start_positions[i] > 0]
    assert labelled, "the answer fits a window"
    for i in range(len(f)):
        s, e = f.start_positions[i], f.end_positions[i]
        if s == 0:
            assert e == 0
            continue
        off = f.offsets[i]
        assert CONTEXT_1[off[s][0]:off[e][1]] == "Gustave Eiffel"
        assert f.token_type_ids[i][s] == 1
    # question and special tokens have no offsets; padding neither
    i = labelled[0]
    assert (f.offsets[i][0] == -1).all() and (f.offsets[i][f.attention_mask[i] == 0] == -1).all()


def test_answer_at_window_edges(tok):
    """Answers that are exactly the first / last context token of a window are labelled; one cut by the
    window boundary is [CLS] in that window and labelled in the next."""
    context = " ".join(f"w{i}" for i in range(40))      # each "wN" is 2 pieces: w, ##N
    q = "q"
    n_q = len(tok.encode(q, add_special_tokens=False).ids)
    seq_len, stride = 20, 4
    room = seq_len - n_q - 3
    ctx = tok.encode(context, add_special_tokens=False)
    # the answer starting exactly at the first context token of the second window
    second = room - stride
    first_tok = ctx.offsets[second]
    ans_start = first_tok[0]
    ans = context[ans_start:ctx.offsets[second + 1][1]]
    f = build_features([_example(q, context, ans, ans_start)], tok, seq_len=seq_len, doc_stride=stride,
                       max_query_length=64, training=True)
    first_ctx = n_q + 2
    assert f.start_positions[1] == first_ctx and f.end_positions[1] == first_ctx + 1
    # answer ending on the last context token of window 0
    last = room - 1
    ans_start = ctx.offsets[last - 1][0]
    ans = context[ans_start:ctx.offsets[last][1]]
    f = build_features([_example(q, context, ans, ans_start)], tok, seq_len=seq_len, doc_stride=stride,
                       max_query_length=64, training=True)
    assert f.end_positions[0] == first_ctx + room - 1 and f.start_positions[0] == first_ctx + room - 2
    # answer straddling window 0's end: [CLS] there, labelled in window 1 (which overlaps by `stride`)
    ans_start = ctx.offsets[last][0]
    ans = context[ans_start:ctx.offsets[last + 1][1]]
    f = build_features([_example(q, context, ans, ans_start)], tok, seq_len=seq_len, doc_stride=stride,
                       max_query_length=64, training=True)
    assert f.start_positions[0] == 0 and f.end_positions[0] == 0
    assert f.start_positions[1] > 0


def test_answer_outside_every_window_is_cls(tok):
    # max_query_length cuts the question; an answer_start beyond the context is in no window
    ex = _example("Who?", CONTEXT_1, "Gustave Eiffel")
    ex["answers"]["answer_start"] = [len(CONTEXT_1) + 5]
    f = build_features([ex], tok, seq_len=24, doc_stride=4, max_query_length=64, training=True)
    assert (f.start_positions == 0).all() and (f.end_positions == 0).all()


def test_question_is_capped(tok):
    long_q = " ".join(["question"] * 100)
    f = build_features([_example(long_q, CONTEXT_1, "Paris")], tok, seq_len=64, doc_stride=8,
                       max_query_length=10, training=False)
    assert (f.token_type_ids[0][:12] == 0).all() and f.input_ids[0][11] == tok.token_to_id("[SEP]")
    assert f.offsets[0][12][0] >= 0
