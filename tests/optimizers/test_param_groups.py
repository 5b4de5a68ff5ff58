"""Parameter groups by rule on the real models."""
import pytest
import torch

from groupbert.models import build_model
from optimizers import param_groups


@pytest.fixture(scope="module")
def make_model(tiny_model_config):
    def make(kind):  # the tiny model on one layer of 2 heads, a 2H feed-forward, (GroupBERT) 2 conv groups
        return build_model(tiny_model_config(kind, num_layers=1, num_heads=2, intermediate_size=64,
                                             conv_group_size=16))
    return make


def test_groups_cover_every_parameter_once_with_the_right_settings(make_model):
    for kind in ("bert", "groupbert"):
        model = make_model(kind)
        groups = {g["group"]: g for g in param_groups(model, 0.01)}
        unique = {id(p) for p in model.parameters()}
        listed = [id(p) for g in groups.values() for p in g["params"]]
        assert sorted(listed) == sorted(unique)  # tied decoder weight appears once
        assert all(p.dim() >= 2 for p in groups["matrices"]["params"])
        assert all(p.dim() == 1 for p in groups["vectors"]["params"])
        assert groups["vectors"]["weight_decay"] == 0 and groups["vectors"]["trust_ratio"] is False
        assert groups["matrices"]["weight_decay"] == 0.01 and groups["matrices"]["rotational"] is True
        names = groups["embeddings"]["param_names"]
        assert "bert.embeddings.word_embeddings.weight" in names
        assert any("LayerNorm" in n or "norm" in n for n in groups["vectors"]["param_names"])


def test_embedding_rules_are_configurable(make_model):
    groups = {g["group"]: g for g in param_groups(make_model("bert"), 0.1, decay_embeddings=False,
                                                  rotational_embeddings=False, trust_ratio_vectors=True)}
    assert groups["embeddings"]["weight_decay"] == 0.0 and groups["embeddings"]["rotational"] is False
    assert groups["vectors"]["trust_ratio"] is True


def test_torch_optimizers_accept_the_groups(make_model):
    model = make_model("groupbert")
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    model(torch.randint(0, 99, (2, 8))).mlm_logits.sum().backward()
    opt.step()
