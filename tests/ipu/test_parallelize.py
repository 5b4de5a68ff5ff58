"""Pipelining annotations on the real models: placement as Graphcore's BERT app, removable."""
import pytest
import torch

from groupbert.config import ModelConfig
from groupbert.ipu.pipeline import deparallelize, layer_ipus, parallelize
from groupbert.models import build_model


def _model(kind, layers=4):
    torch.manual_seed(0)
    return build_model(ModelConfig(type=kind, vocab_size=99, hidden_size=32, num_layers=layers, num_heads=2,
                                   intermediate_size=64, max_positions=64))


def test_layer_ipus():
    assert layer_ipus([1, 3]) == [0, 1, 1, 1]
    assert layer_ipus([0, 4, 4, 4])[:5] == [1, 1, 1, 1, 2]


@pytest.mark.parametrize("kind", ["bert", "groupbert"])
def test_parallelize_keeps_numerics_and_is_removable(kind):
    model = _model(kind).eval()
    ids = torch.randint(0, 99, (2, 16))
    before = model(ids).mlm_logits
    parallelize(model, [1, 1, 2])
    torch.testing.assert_close(model(ids).mlm_logits, before)  # blocks are no-ops outside PopTorch
    deparallelize(model)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_layers_that_do_not_cover_the_model_are_rejected():
    with pytest.raises(ValueError, match="places 3 layers but the model has 4"):
        parallelize(_model("groupbert"), [1, 2])
