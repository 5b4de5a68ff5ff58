"""Analytic FLOPs (groupbert.models.flops) against torch's own counter, and one hand-checked figure.

The counter runs on the ``meta`` device (shapes only, as tests/ipu/test_planner.py does): there SDPA
decomposes into its two matmuls and GroupBERT's conv runs ``F.conv1d``, which the counter knows. On real
CPU tensors it would miss work: the fused CPU flash-attention kernel and our C++ conv op are not in
``torch.utils.flop_counter``'s registry.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from groupbert.config import ModelConfig
from groupbert.models import build_model
from groupbert.models.bert import BertModel
from groupbert.models.flops import forward_flops, layer_forward_flops, train_flops_per_token
from groupbert.models.qa import BertForQuestionAnswering

B, T, P = 3, 24, 5


def _inputs(m: ModelConfig) -> dict:
    ids = torch.randint(0, m.vocab_size, (B, T))
    if m.type == "gpt2":
        return {"input_ids": ids, "labels": ids}
    return {"input_ids": ids, "masked_lm_positions": torch.randint(0, T, (B, P)),
            "masked_lm_labels": torch.randint(0, m.vocab_size, (B, P)),
            "next_sentence_label": torch.randint(0, 2, (B,))}


def _count(m: ModelConfig, backward: bool, pad_vocab: bool = False) -> int:
    """The counter's FLOPs; GPT-2 with its plain LM head unless ``pad_vocab`` (the host's padded GEMM does
    hardware FLOPs on the padding columns that model FLOPs, and MFU, leave out)."""
    with torch.device("meta"):
        model = build_model(m)
        inputs = _inputs(m)
    if hasattr(model, "pad_vocab"):
        model.pad_vocab = pad_vocab
    with FlopCounterMode(display=False) as counter:
        out = model(**inputs)
        if backward:
            out.loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("model_type", ["bert", "groupbert", "gpt2"])
def test_forward_equals_torch_flop_counter(model_type, tiny_model_config):
    m = tiny_model_config(model_type)
    assert forward_flops(m, B, T, None if model_type == "gpt2" else P) == _count(m, backward=False)


def test_gpt2_padded_head_adds_only_the_padding_columns(tiny_model_config):
    """The host fast path (``pad_vocab``) multiplies by V' = V rounded up to 64 rows: the counter sees
    2 N H (V' - V) more forward FLOPs than the model FLOPs, nothing else."""
    from groupbert.models.gpt2 import VOCAB_ALIGN

    m = tiny_model_config("gpt2")
    extra_columns = -m.vocab_size % VOCAB_ALIGN
    assert extra_columns > 0   # the tiny vocabulary is not a multiple of 64, so the fast path is taken
    assert _count(m, backward=False, pad_vocab=True) == (forward_flops(m, B, T)
                                                         + 2 * B * T * m.hidden_size * extra_columns)


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_training_step_is_three_forwards(model_type, tiny_model_config):
    """Every matmul's backward computes dX and dW, each as many FLOPs as the forward product."""
    m = tiny_model_config(model_type)
    analytic = forward_flops(m, B, T, None if model_type == "gpt2" else P)
    assert _count(m, backward=True) == 3 * analytic
    assert train_flops_per_token(m, T, None if model_type == "gpt2" else P) == 3 * analytic / (B * T)


def test_groupbert_training_step_is_three_forwards_plus_the_counters_grouped_conv_excess(tiny_model_config):
    """GroupBERT: 3 x forward too, but the counter over-counts the grouped conv's weight gradient by the
    number of groups G (torch's ``conv_backward_flop`` computes dW as a dense conv, ignoring ``groups``),
    so it reports 3 x forward + (G - 1) x the conv's forward FLOPs. The true dW work of a grouped conv is
    its forward's (each output channel's kernel sees only its group's C/G inputs)."""
    m = tiny_model_config("groupbert")
    groups = m.hidden_size // m.conv_group_size
    conv_forward = m.num_layers * 2 * B * T * m.hidden_size * m.conv_kernel_size * m.conv_group_size
    analytic = forward_flops(m, B, T, P)
    assert groups > 1
    assert _count(m, backward=True) == 3 * analytic + (groups - 1) * conv_forward


def test_dense_conv_backward_is_two_forwards_in_the_counter():
    """The counter's excess above is the groups: with groups=1 a conv's backward is exactly 2 x forward."""
    with torch.device("meta"):
        x = torch.randn(2, 8, 11, requires_grad=True)
        w_dense = torch.randn(8, 8, 3, requires_grad=True)
        w_grouped = torch.randn(8, 2, 3, requires_grad=True)
    for w, groups, excess in ((w_dense, 1, 0), (w_grouped, 4, 3)):
        with FlopCounterMode(display=False) as fwd:
            y = F.conv1d(x, w, padding=1, groups=groups)
        with FlopCounterMode(display=False) as bwd:
            y.sum().backward()
        assert bwd.get_total_flops() == (2 + excess) * fwd.get_total_flops()


def test_causal_attention_counts_the_full_t_by_t_products():
    """is_causal does not halve the count: the counter's SDPA formulas (the CUDA kernels') and the math
    path both count Q K^T and P V over all T x T pairs, as ``layer_forward_flops``' 4 T H per token."""
    b, heads, t, d = 2, 4, 16, 8
    with torch.device("meta"):
        q = torch.randn(b, heads, t, d)
    full = 2 * (2 * b * heads * t * t * d)
    with FlopCounterMode(display=False) as math_path:
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    with FlopCounterMode(display=False) as fused:
        torch.ops.aten._scaled_dot_product_efficient_attention(q, q, q, None, False, is_causal=True)
    assert math_path.get_total_flops() == fused.get_total_flops() == full


def test_masked_positions_none_runs_the_mlm_head_everywhere(tiny_model_config):
    m = tiny_model_config("bert")
    assert forward_flops(m, B, T) == forward_flops(m, B, T, masked_positions=T)
    with torch.device("meta"):
        model = build_model(m)
        ids = torch.zeros(B, T, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(ids)
    assert forward_flops(m, B, T) == counter.get_total_flops()


@pytest.mark.parametrize("model_type", ["bert", "groupbert"])
def test_qa_head_equals_the_counter(model_type, tiny_model_config):
    m = tiny_model_config(model_type)
    with torch.device("meta"):
        model = BertForQuestionAnswering(m)
        ids = torch.zeros(B, T, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(ids)
    assert forward_flops(m, B, T, head="qa") == counter.get_total_flops()


def test_packed_rows_pool_every_sequence(tiny_model_config):
    m = tiny_model_config("bert")
    S = 3
    with torch.device("meta"):
        model = build_model(m)
        ids = torch.zeros(B, T, dtype=torch.long)
        inputs = {"input_ids": ids, "masked_lm_positions": torch.zeros(B, P, dtype=torch.long),
                  "cls_positions": torch.zeros(B, S, dtype=torch.long),
                  "segment_ids": torch.ones(B, T, dtype=torch.long),
                  "position_ids": torch.zeros(B, T, dtype=torch.long)}
    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert forward_flops(m, B, T, P, sequences_per_row=S) == counter.get_total_flops()


def test_bert_base_at_128_tokens_and_20_masks_by_hand():
    m = ModelConfig(type="bert")    # H 768, I 3072, L 12, V 30522
    H, I, L, V, T_, P_ = 768, 3072, 12, 30522, 128, 20
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.vocab_size) == (H, I, L, V)
    # one layer, per token: projections 8 H^2 = 4,718,592; attention 4 T H = 393,216; FFN 4 H I = 9,437,184
    per_token_layer = 4_718_592 + 393_216 + 9_437_184
    assert per_token_layer == 14_548_992 == layer_forward_flops(m, 1, T_) / T_
    encoder = L * T_ * per_token_layer                        # 12 x 128 x 14,548,992 = 22,347,251,712
    pooler_nsp = 2 * (H * H + 2 * H)                          # 2 (589,824 + 1,536) = 1,182,720
    mlm = 2 * P_ * (H * H + H * V)                            # 40 x (589,824 + 23,440,896) = 961,228,800
    assert (encoder, pooler_nsp, mlm) == (22_347_251_712, 1_182_720, 961_228_800)
    forward = 22_347_251_712 + 1_182_720 + 961_228_800        # 23,309,663,232 per sequence
    assert forward_flops(m, 1, T_, P_) == forward == 23_309_663_232
    # training: 3 x 23,309,663,232 / 128 = 546,320,232 FLOPs per token, i.e. 0.546 GFLOP (6N with
    # N = 85M non-embedding parameters is 0.51 GFLOP; the rest is attention and the MLM projection)
    assert train_flops_per_token(m, T_, P_) == 546_320_232


def test_headless_encoder_counts_only_the_layers_and_pooler(tiny_model_config):
    """The layer count alone: a BertModel forward is L layers plus the pooler's H x H."""
    m = tiny_model_config("bert")
    with torch.device("meta"):
        model = BertModel(m)
        ids = torch.zeros(B, T, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(ids)
    assert counter.get_total_flops() == m.num_layers * layer_forward_flops(m, B, T) + 2 * B * m.hidden_size ** 2


def test_unknown_head_is_refused(tiny_model_config):
    with pytest.raises(ValueError, match="head"):
        forward_flops(tiny_model_config("bert"), 1, 8, head="ctc")
    with pytest.raises(ValueError, match="gpt2"):
        forward_flops(tiny_model_config("gpt2"), 1, 8, head="qa")
