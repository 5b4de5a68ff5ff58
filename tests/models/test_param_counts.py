"""Parameter counts of the published sizes, built on the meta device: BERT Base 110M (Devlin et al.);
GroupBERT Base ~161M (Graphcore/groupbert-base-uncased holds 322 MB of fp16 weights); Large by the same
layer arithmetic."""
import pytest
import torch

from groupbert.config import ModelConfig
from groupbert.models import BertForPreTraining, GroupBertForPreTraining

BASE = dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
            max_positions=512)
LARGE = dict(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
             max_positions=512)


def _count(model_cls, **sizes):
    with torch.device("meta"):  # no memory, no init cost
        model = model_cls(ModelConfig(**sizes))
    return sum(p.numel() for p in model.parameters())  # parameters() yields the tied decoder once


@pytest.mark.parametrize("model_cls, sizes, expected", [
    (GroupBertForPreTraining, dict(type="groupbert", **BASE), 160.8e6),
    (BertForPreTraining, dict(type="bert", **BASE), 110.1e6),
    (GroupBertForPreTraining, dict(type="groupbert", **LARGE), 515.5e6),
], ids=["groupbert-base", "bert-base", "groupbert-large"])
def test_parameter_count(model_cls, sizes, expected):
    assert _count(model_cls, **sizes) == pytest.approx(expected, rel=0.01)


def test_groupbert_base_layer_breakdown():
    # conv 1.86M + 2 x GFFN 3.54M + attention 2.36M (+ 4 pre-norms) per layer
    with torch.device("meta"):
        layer = GroupBertForPreTraining(ModelConfig(type="groupbert", **BASE)).bert.encoder.layer[0]
    n = {name: sum(p.numel() for p in getattr(layer, name).parameters()) for name in ("conv", "ffn1", "attn")}
    assert n["conv"] == 2 * 768 * 768 + 2 * 768 + 768 * 16 * 7 + 768 + 2 * 768 + 768 * 768 + 768
    assert n["ffn1"] == 768 * 3072 + 3072 + 3072 * 768 // 4 + 768 + 768 * 768 + 768
    assert n["attn"] == 4 * (768 * 768 + 768)
