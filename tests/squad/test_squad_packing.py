"""SQuAD on packed rows: the span loss, its gradients and the logits of every feature equal the unpacked
ones; a packed fine-tuning run trains on every feature and predicts every dev question."""
import json

import numpy as np
import pytest
import torch

from groupbert.data import load_wordpiece, special_ids
from groupbert.data.columns import IGNORE_INDEX
from groupbert.models.qa import BertForQuestionAnswering
from groupbert.squad.dataset import load_squad
from groupbert.squad.features import build_features, pack_features
from groupbert.tasks.squad import finetune, predict_logits
from squad_fixtures import write_nested

SEQ = 128


class _null:  # the autocast argument: no autocast
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.fixture(scope="module")
def tok():
    return load_wordpiece()


@pytest.fixture(scope="module")
def features(tok):
    examples, _ = load_squad(None, "train", 40)  # the shipped set: varied lengths, some multi-window
    return build_features(examples, tok, training=True, seq_len=SEQ, doc_stride=32, max_query_length=32)


@pytest.fixture(scope="module")
def make_model(tiny_model_config):
    def make(kind):  # the tiny model on the WordPiece vocabulary, a 2H feed-forward
        cfg = tiny_model_config(kind, vocab_size=30522, intermediate_size=64, max_positions=SEQ,
                                hidden_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        return BertForQuestionAnswering(cfg).double()
    return make


def _loss_and_grads(model, cols):
    model.zero_grad()
    out = model(**{k: torch.as_tensor(np.ascontiguousarray(v)).long() for k, v in cols.items()})
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["bert", "groupbert"])
def test_packed_span_loss_gradients_and_logits_equal_unpacked(kind, features, tok, make_model):
    pad = special_ids(tok).pad
    cols, layout, plan = pack_features(features, pad, max_per_pack=3, seed=2)
    assert plan.num_rows < len(features) and plan.num_sequences == len(features)
    # every feature's labels point at the same tokens in its packed row
    for i in range(len(features)):
        r, slot, off = layout.row[i], layout.slot[i], layout.offset[i]
        assert cols["start_positions"][r, slot] == features.start_positions[i] + off
        assert cols["input_ids"][r, off + features.end_positions[i]] == features.input_ids[i, features.end_positions[i]]
    assert (cols["start_positions"] == IGNORE_INDEX).sum() == plan.num_rows * 3 - len(features)

    model = make_model(kind)
    a, ga = _loss_and_grads(model, features.model_inputs(True))
    b, gb = _loss_and_grads(model, cols)
    assert a == pytest.approx(b, rel=1e-6)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-8, atol=1e-12, msg=n)

    # inference on packed rows, logits handed back per feature: equal at every real token
    s0, e0 = predict_logits(model, features, 16, torch.device("cpu"), _null, None)
    s1, e1 = predict_logits(model, features, 16, torch.device("cpu"), _null, (pad, 3))
    real = features.attention_mask.astype(bool)
    np.testing.assert_allclose(s1[real], s0[real], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e1[real], e0[real], rtol=1e-5, atol=1e-6)
    assert (s1[~real] < -1e8).all()


def test_packed_finetune_runs_on_every_feature(tmp_path, squad_config):
    data = write_nested(tmp_path / "squad.json")
    # one epoch (squad.epochs sets the length; train.max_steps is not read)
    finetune(squad_config("model.max_positions=128", "data.seq_len=128", f"squad.train_file={data}",
                          f"squad.dev_file={data}", "data.packing=true", "squad.epochs=1", "train.micro_batch_size=2",
                          "train.checkpoint_every=0"), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    run = next(r for r in records if r["kind"] == "run")
    assert run["train_rows"] < run["train_features"]  # six short questions: two or three per row
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == -(-run["train_rows"] // 2)  # one epoch of rows, two rows per step
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert set(preds) == {f"q{i}" for i in range(1, 7)}
