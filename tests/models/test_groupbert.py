"""GroupBERT (arXiv 2106.05822): structure, masking, leaf layers against torch references, training."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groupbert.models import GroupedLinear, GroupBertForPreTraining, GroupBertModel, build_model


@pytest.fixture(scope="module")
def tiny(tiny_model_config):
    return tiny_model_config()  # the shared tiny GroupBERT (conftest.py): 4 conv groups, 4 FFN groups


def _padded_batch(B=3, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 99, (B, T), generator=g)
    token_type_ids = (torch.arange(T) >= T // 2).long().expand(B, T).clone()
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, 11:] = 0
    attention_mask[2, 6:] = 0
    return input_ids, token_type_ids, attention_mask


def test_layer_runs_modules_in_order_conv_ffn1_attn_ffn2(tiny):
    torch.manual_seed(0)
    model = GroupBertModel(tiny).eval()
    calls = []
    for i, layer in enumerate(model.encoder.layer):
        for name in ("conv_norm", "conv", "ffn1_norm", "ffn1", "attn_norm", "attn", "ffn2_norm", "ffn2"):
            getattr(layer, name).register_forward_hook(lambda *_, tag=f"{i}.{name}": calls.append(tag))
    model.encoder.final_norm.register_forward_hook(lambda *_: calls.append("final_norm"))
    model(torch.randint(0, 99, (2, 8)))
    per_layer = ["conv_norm", "conv", "ffn1_norm", "ffn1", "attn_norm", "attn", "ffn2_norm", "ffn2"]
    assert calls == [f"{i}.{n}" for i in range(2) for n in per_layer] + ["final_norm"]


def test_layer_is_four_prenorm_residuals(tiny):
    torch.manual_seed(0)
    model = GroupBertModel(tiny).eval()
    layer = model.encoder.layer[0]
    x = torch.randn(2, 8, 32)
    pad = torch.ones(2, 8, dtype=torch.bool)
    pad[1, 5:] = False
    attn_mask = torch.zeros(2, 1, 1, 8).masked_fill(~pad[:, None, None, :], -10000.0)
    with torch.no_grad():
        y = x + layer.conv(F.layer_norm(x, (32,), layer.conv_norm.weight, layer.conv_norm.bias, 1e-3), pad)
        y = y + layer.ffn1(F.layer_norm(y, (32,), layer.ffn1_norm.weight, layer.ffn1_norm.bias, 1e-3))
        y = y + layer.attn(F.layer_norm(y, (32,), layer.attn_norm.weight, layer.attn_norm.bias, 1e-3), attn_mask)
        y = y + layer.ffn2(F.layer_norm(y, (32,), layer.ffn2_norm.weight, layer.ffn2_norm.bias, 1e-3))
        torch.testing.assert_close(layer(x, attn_mask, pad), y)


def test_padded_positions_do_not_change_real_outputs(tiny):
    torch.manual_seed(0)
    model = GroupBertForPreTraining(tiny).eval()
    input_ids, token_type_ids, attention_mask = _padded_batch()
    pad = attention_mask == 0
    other_ids = torch.where(pad, (input_ids + 17) % 99, input_ids)
    other_types = torch.where(pad, 1 - token_type_ids, token_type_ids)
    with torch.no_grad():
        a = model.bert(input_ids, token_type_ids, attention_mask)
        b = model.bert(other_ids, other_types, attention_mask)
        c = model.bert(other_ids, other_types)  # without the mask the padding must matter
    real = ~pad
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.last_hidden_state[real], c.last_hidden_state[real], atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 5, 12), (7, 12), (1, 1, 1, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_linear_matches_conv1d(shape, bias):
    torch.manual_seed(0)
    groups, out_features = 3, 6
    layer = GroupedLinear(12, out_features, groups, bias=bias)
    if bias:
        nn.init.normal_(layer.bias)
    conv = nn.Conv1d(12, out_features, 1, groups=groups, bias=bias)
    with torch.no_grad():
        # conv.weight[o, i, 0] for output channel o = g * out/G + j is layer.weight[g, i, j]
        conv.weight.copy_(layer.weight.permute(0, 2, 1).reshape(out_features, 12 // groups, 1))
        if bias:
            conv.bias.copy_(layer.bias)
    x = torch.randn(*shape)
    flat = x.reshape(-1, 12)
    expected = conv(flat.T.unsqueeze(0)).squeeze(0).T.reshape(*shape[:-1], out_features)  # C, N layout
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    assert "groups=3" in repr(layer)


def test_grouped_linear_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="groups"):
        GroupedLinear(10, 6, 4)


def test_conv_module_matches_functional_reference(tiny):
    torch.manual_seed(0)
    conv = GroupBertModel(tiny).encoder.layer[0].conv.eval()
    with torch.no_grad():
        for p in conv.parameters():  # non-trivial biases and norm affine
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 10, 32)
    pad = torch.ones(2, 10, dtype=torch.bool)
    pad[0, 7:] = False
    W, b = conv.glu.weight, conv.glu.bias
    values = x @ W[:32].T + b[:32]
    gates = x @ W[32:].T + b[32:]
    h = values * torch.sigmoid(gates) * pad[..., None].float()
    h = F.conv1d(h.permute(0, 2, 1), conv.grouped_conv.weight, conv.grouped_conv.bias, padding=3, groups=4)
    h = h.permute(0, 2, 1)
    h = F.layer_norm(h, (32,), conv.norm.weight, conv.norm.bias, eps=1e-3)
    expected = F.linear(h * torch.sigmoid(h), conv.output.weight, conv.output.bias)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, pad), expected, atol=1e-5, rtol=1e-5)
    assert conv.grouped_conv.weight.shape == (32, 8, 7)  # 16 channels/group at full size; 8 here


def test_loss_decreases_on_a_tiny_batch(tiny):
    torch.manual_seed(0)
    model = GroupBertForPreTraining(tiny).train()
    input_ids, token_type_ids, attention_mask = _padded_batch(B=4)
    positions = torch.tensor([[1, 3, 5], [2, 4, 0], [1, 2, 0], [3, 4, 5]])
    labels = torch.tensor([[5, 6, 7], [8, 9, -100], [10, 11, -100], [12, 13, 14]])
    nsp = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        out = model(input_ids, token_type_ids, attention_mask, positions, labels, nsp)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_backward_with_dropout_reaches_every_parameter(tiny):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(tiny, hidden_dropout=0.1, attention_dropout=0.1)).train()
    input_ids, token_type_ids, attention_mask = _padded_batch()
    positions = torch.tensor([[1, 2], [3, 4], [1, 5]])
    out = model(input_ids, token_type_ids, attention_mask, positions, torch.tensor([[1, 2], [3, 4], [5, -100]]),
                torch.tensor([0, 1, 1]))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert out.mlm_logits.shape == (3, 2, 99) and out.nsp_logits.shape == (3, 2)


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=36), "conv_group_size"),                                   # 36 % 8
    (dict(intermediate_size=37), "intermediate_size"),                           # 37 % 4
    (dict(hidden_size=48, conv_group_size=16, num_heads=4, ffn_groups=3, intermediate_size=36), None),
    (dict(hidden_size=48, conv_group_size=16, num_heads=4, ffn_groups=5, intermediate_size=40), "ffn_groups"),
    (dict(num_heads=5), "num_heads"),                                            # 32 % 5
    (dict(conv_kernel_size=6), "conv_kernel_size"),
])
def test_invalid_sizes_raise_naming_the_field(overrides, field, tiny):
    cfg = dataclasses.replace(tiny, **overrides)
    if field is None:  # a valid odd-sized config builds
        GroupBertModel(cfg)
        return
    with pytest.raises(ValueError, match=field):
        GroupBertModel(cfg)


def test_init_is_truncated_normal_with_zero_biases(tiny):
    torch.manual_seed(0)
    model = GroupBertForPreTraining(dataclasses.replace(tiny, hidden_size=64, intermediate_size=256,
                                                        conv_group_size=16))
    layer = model.bert.encoder.layer[0]
    for w in (layer.ffn1.output.weight, layer.conv.grouped_conv.weight, layer.attn.query.weight):
        assert w.abs().max() <= 0.04 + 1e-7
        assert 0.012 < w.std() < 0.02  # truncation at 2σ shrinks std to ~0.88σ
    for b in (layer.ffn1.output.bias, layer.conv.grouped_conv.bias, model.cls.predictions.bias):
        assert torch.all(b == 0)
    assert torch.all(layer.conv.norm.weight == 1) and layer.conv_norm.eps == 1e-3
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_build_model_rejects_unknown_type(tiny):
    with pytest.raises(ValueError, match="bert.*groupbert"):
        build_model(dataclasses.replace(tiny, type="gpt3"))
