"""Training on packed rows computes what unpacked training computes, sequence for sequence.

MLM + NSP instances from the real pipeline (varied lengths: short_seq_prob 0.5) are packed with SPFHP
(``groupbert.data.packing``); BERT and GroupBERT then give the same MLM and NSP losses, the same hidden
states at every real token and the same gradients for every parameter, packed or not (float64). The data
side is checked against the unpacked columns: every sequence's tokens, token types, masked positions and
labels land in exactly one row, at its offset.
"""
import random

import numpy as np
import pytest
import torch

from groupbert.data import Document, build_pretraining_dataset, bundled_vocab_file, load_wordpiece, special_ids
from groupbert.data.columns import IGNORE_INDEX, PACKED_MASKED_LM
from groupbert.data.packing import (max_predictions_per_row, pack_pretraining_columns,
                                    pack_pretraining_dataset)
from groupbert.models import build_model

SEQ, P, S = 64, 10, 3


@pytest.fixture(scope="module")
def tok():
    return load_wordpiece()


@pytest.fixture(scope="module")
def columns(tok):
    vocab = bundled_vocab_file().read_text("utf-8").splitlines()
    words = [w for w in vocab[2000:12000] if w.isalpha() and w.isascii() and len(w) > 3]
    rng = random.Random(0)
    docs = [Document(f"doc{d}", [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "."
                                 for _ in range(rng.randint(3, 12))]) for d in range(30)]
    ds = build_pretraining_dataset(docs, tok, seq_len=SEQ, max_predictions=P, short_seq_prob=0.5, seed=3,
                                   show_progress=False)
    return {k: np.asarray(v) for k, v in ds.with_format("numpy")[:].items()}


@pytest.fixture(scope="module")
def packed(columns, tok):
    return pack_pretraining_columns(columns, special_ids(tok).pad, S, mask_prob=0.15, seed=1)


def _members(row: dict):
    """(slot, start, length) of every sequence in a packed row, read from its sequence numbers."""
    ids = row["segment_ids"]
    out = []
    for s in range(1, ids.max() + 1):
        where = np.flatnonzero(ids == s)
        assert len(where) and (np.diff(where) == 1).all(), "a sequence must be contiguous"
        out.append((s - 1, int(where[0]), len(where)))
    return out


def test_every_sequence_lands_once_intact(columns, packed, tok):
    cols, plan = packed
    pad = special_ids(tok).pad
    n = len(columns["input_ids"])
    lengths = columns["attention_mask"].sum(1)
    assert plan.num_sequences == n and plan.efficiency > lengths.sum() / (n * SEQ)
    # identify each packed sequence by its tokens + token types + masked labels
    key = lambda ids, tt, lab: (tuple(ids), tuple(tt), tuple(sorted(lab)))  # noqa: E731
    expected = {}
    for i in range(n):
        L = lengths[i]
        lab = columns["masked_lm_labels"][i]
        expected.setdefault(key(columns["input_ids"][i, :L], columns["token_type_ids"][i, :L], lab[lab != IGNORE_INDEX]), []).append(i)
    seen = 0
    for r in range(len(cols["input_ids"])):
        row = {k: v[r] for k, v in cols.items()}
        members = _members(row)
        end = members[-1][1] + members[-1][2]
        assert (row["input_ids"][end:] == pad).all() and (row["position_ids"][end:] == 0).all()
        pos, lab = row["masked_lm_positions"], row["masked_lm_labels"]
        for slot, start, L in members:
            assert row["cls_positions"][slot] == start and row["input_ids"][start] == special_ids(tok).cls
            assert (row["position_ids"][start:start + L] == np.arange(L)).all()
            mine = (lab != IGNORE_INDEX) & (pos >= start) & (pos < start + L)
            assert (row["input_ids"][pos[mine]] != pad).all()
            k = key(row["input_ids"][start:start + L], row["token_type_ids"][start:start + L], lab[mine])
            assert expected.get(k), f"row {r} slot {slot} matches no unpacked sequence"
            i = expected[k].pop()
            assert row["next_sentence_label"][slot] == columns["next_sentence_label"][i]
            # masked positions shifted by the offset, labels unchanged
            src = columns["masked_lm_positions"][i][columns["masked_lm_labels"][i] != IGNORE_INDEX]
            assert sorted(pos[mine] - start) == sorted(src)
            seen += 1
        assert (row["next_sentence_label"][len(members):] == IGNORE_INDEX).all()
    assert seen == n and not any(expected.values())
    assert cols["masked_lm_labels"].shape[1] == max_predictions_per_row(SEQ, 0.15, P, S)


@pytest.fixture(scope="module")
def make_model(tiny_model_config):
    def make(kind: str):  # the tiny model on the WordPiece vocabulary: 2 heads, 2H feed-forward, 2 conv groups
        cfg = tiny_model_config(kind, vocab_size=30522, num_heads=2, intermediate_size=64, conv_group_size=16,
                                max_positions=SEQ, hidden_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        return build_model(cfg).double()
    return make


def _forward(model, batch: dict):
    model.zero_grad()
    tensors = {k: torch.as_tensor(v).long() for k, v in batch.items()}
    out = model(**tensors)
    out.loss.backward()
    hidden = model.bert(tensors["input_ids"], tensors["token_type_ids"], tensors["attention_mask"],
                        tensors.get("position_ids"), segment_ids=tensors.get("segment_ids")).last_hidden_state.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, hidden, grads


@pytest.mark.parametrize("kind", ["bert", "groupbert"])
def test_packed_losses_hidden_states_and_gradients_equal_unpacked(kind, columns, packed, make_model):
    cols, _ = packed
    model = make_model(kind)
    a, ha, ga = _forward(model, columns)
    b, hb, gb = _forward(model, cols)
    assert a.mlm_loss.item() == pytest.approx(b.mlm_loss.item(), rel=1e-6)
    assert a.nsp_loss.item() == pytest.approx(b.nsp_loss.item(), rel=1e-6)
    assert b.nsp_logits.shape == (len(cols["input_ids"]), S, 2)
    # hidden states of each sequence, wherever it was packed
    lengths = columns["attention_mask"].sum(1)
    by_tokens = {tuple(columns["input_ids"][i, :lengths[i]]) + tuple(columns["token_type_ids"][i, :lengths[i]]): i
                 for i in range(len(lengths))}
    for r in range(len(cols["input_ids"])):
        for _, start, L in _members({k: v[r] for k, v in cols.items()}):
            i = by_tokens[tuple(cols["input_ids"][r, start:start + L]) + tuple(cols["token_type_ids"][r, start:start + L])]
            torch.testing.assert_close(hb[r, start:start + L], ha[i, :L], rtol=1e-9, atol=1e-10)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-8, atol=1e-12, msg=n)


def test_unpacked_rows_through_the_packed_path_are_unchanged(columns, make_model):
    """One sequence per row is the packed format's special case (sequence number 1, positions 0..T-1)."""
    model = make_model("groupbert")
    a, _, ga = _forward(model, columns)
    n = len(columns["input_ids"])
    as_packed = dict(columns, position_ids=np.tile(np.arange(SEQ), (n, 1)), cls_positions=np.zeros((n, 1)),
                     segment_ids=columns["attention_mask"], next_sentence_label=columns["next_sentence_label"][:, None])
    b, _, gb = _forward(model, as_packed)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-8, atol=1e-12, msg=k)


def test_dataset_wrapper_and_determinism(columns, tok):
    import datasets
    ds = datasets.Dataset.from_dict({k: v for k, v in columns.items()})
    a = pack_pretraining_dataset(ds, special_ids(tok).pad, S, seed=5)
    b = pack_pretraining_dataset(ds, special_ids(tok).pad, S, seed=5)
    c = pack_pretraining_dataset(ds, special_ids(tok).pad, S, seed=6)
    assert set(a.column_names) == set(PACKED_MASKED_LM)
    assert torch.equal(a[:]["input_ids"], b[:]["input_ids"])
    assert not torch.equal(a[:]["input_ids"], c[:]["input_ids"])
    assert len(a) < len(ds)


def test_left_padded_rows_are_rejected(columns, tok):
    bad = {k: v.copy() for k, v in columns.items()}
    bad["attention_mask"][0] = bad["attention_mask"][0][::-1]
    with pytest.raises(ValueError, match="right padding"):
        pack_pretraining_columns(bad, special_ids(tok).pad, S)
