"""GroupBERT: BERT with a convolution module, grouped feed-forwards and pre-norm residuals.

Chelombiev, Justus, Orr, Dietrich, Gressmann, Koliousis, Luschi 2021, "GroupBERT: Enhanced
Transformer Architecture with Efficient Grouped Structures", https://arxiv.org/abs/2106.05822.
Agrees with Graphcore's released implementation (graphcore/examples ``nlp/bert/tensorflow1/modeling.py``,
``GroupBertModel``) and its PopTorch port (huggingface/optimum-graphcore ``models/groupbert``).
Parameter names follow the layer equation below. A public checkpoint exists: Graphcore's GroupBERT-Base
(Hub ``Graphcore/groupbert-base-uncased``, H 768, L 12, K 7, conv groups of 16, 4 FFN groups) in
optimum-graphcore's layout, whose names differ from ours and whose GLU stores [gate | value] where ours is
[value | gate]; ``groupbert.interop.optimum_groupbert`` converts such a directory to this model
(``load_groupbert_dir``) and this model to it (``export_groupbert``).

Embeddings and heads are BERT's (imported from ``bert.py``). Each of the L layers is four pre-norm
residual modules, in this order, and a final LayerNorm follows the last layer::

    x = x + Drop(Conv(LN(x)))      # conv:  GLU -> zero padding -> grouped conv k=7 -> LN -> SiLU -> Dense
    x = x + Drop(GFFN_1(LN(x)))    # ffn1:  Dense(H->4H) + GELU -> GroupedLinear(4H->H, 4 groups) -> Dense(H->H)
    x = x + Drop(MHSA(LN(x)))      # attn:  BERT self-attention, no internal LayerNorm
    x = x + Drop(GFFN_2(LN(x)))    # ffn2

Deviations from the references, none changing the function at dropout 0:
- the conv has a bias (optimum ``nn.Conv1d(..., groups=H//16)``; the TF conv has none);
- the conv module's LayerNorm is BatchNorm in the paper; both released codes use LayerNorm;
- dropout is applied once per branch, in the residual (TF ``prenorm_residual``);
- the grouped projection's bias starts at zero (TF initialises it with the truncated normal).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import custom_ops
from custom_ops.grouped_conv import grouped_conv1d_segments_reference
from groupbert.config import ModelConfig
from groupbert.models.bert import (
    BertEmbeddings,
    BertLMPredictionHead,
    BertPooler,
    BertPreTrainingHeads,
    EncoderOutput,
    PreTrainingOutput,
    encoder_masks,
    multi_head_attention,
    pretraining_loss,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Leaf blocks


class GroupedLinear(nn.Module):
    """Block-diagonal linear map: G independent ``Linear(in/G, out/G)`` on consecutive channel slices.

    Equal to ``nn.Conv1d(in, out, 1, groups=G)`` over a [B, C, T] layout, computed channels-last as
    one batched matmul. ``weight`` is [G, in/G, out/G]; ``bias`` is [out].
    """

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"in_features ({in_features}) and out_features ({out_features}) must be "
                             f"divisible by groups ({groups})")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(groups, in_features // groups, out_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)  # BERT default; owners re-init

    def forward(self, x: Tensor) -> Tensor:
        *lead, C = x.shape
        G = self.groups
        x = x.reshape(-1, G, C // G).transpose(0, 1)  # N, C -> G, N, C/G
        y = torch.bmm(x, self.weight)                  # G, N, out/G
        y = y.transpose(0, 1).reshape(*lead, self.out_features)  # G, N, out/G -> ..., out
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}, "
                f"bias={self.bias is not None}")


class GroupBertConv(nn.Module):
    """GLU -> zero padded positions -> grouped 1-D conv along T -> LayerNorm -> SiLU -> Dense(H, H)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H, K = config.hidden_size, config.conv_kernel_size
        self.glu = nn.Linear(H, 2 * H)  # [values | gates]
        self.grouped_conv = nn.Conv1d(H, H, K, padding=K // 2, groups=H // config.conv_group_size)
        self.norm = nn.LayerNorm(H, eps=config.eps)  # BatchNorm in the paper; LayerNorm in released code
        self.output = nn.Linear(H, H)
        # The channels-last C++ kernel (custom_ops) on the [B, T, H] activations, with this nn.Conv1d's
        # parameters; the IPU pipeline sets it False so PopTorch lowers nn.Conv1d natively.
        self.use_custom_op = True

    def forward(self, x: Tensor, pad_mask: Tensor, segment_ids: Optional[Tensor] = None) -> Tensor:
        h = F.glu(self.glu(x), dim=-1)  # values * sigmoid(gates): B, T, 2H -> B, T, H
        # Zero the padding so the kernel's window never carries it into real positions.
        h = h * pad_mask.unsqueeze(-1).to(h.dtype)
        h = self._grouped_conv(h, segment_ids)
        return self.output(F.silu(self.norm(h)))

    def _grouped_conv(self, h: Tensor, segment_ids: Optional[Tensor]) -> Tensor:
        """Grouped "same" conv along the sequence, on [B, T, H]; packed rows (``segment_ids``, each token's
        sequence number) cut the kernel window at every sequence edge, as if each sequence had its own row."""
        conv = self.grouped_conv
        if segment_ids is not None:
            if self.use_custom_op:
                return custom_ops.grouped_conv1d(h, conv.weight, conv.bias, conv.groups, segment_ids=segment_ids)
            return grouped_conv1d_segments_reference(h, conv.weight, conv.bias, conv.groups, segment_ids)
        if self.use_custom_op:  # no transposes; falls back to F.conv1d where the C++ op is unavailable
            return custom_ops.grouped_conv1d(h, conv.weight, conv.bias, conv.groups)
        return conv(h.transpose(1, 2)).transpose(1, 2)  # B, T, H -> B, H, T -> B, T, H


class GroupBertGroupedFFN(nn.Module):
    """Dense(H->I) + GELU -> GroupedLinear(I->H, ffn_groups) -> Dense(H->H) mixing the groups."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.intermediate = nn.Linear(H, I)
        self.output = GroupedLinear(I, H, config.ffn_groups)
        self.mixer = nn.Linear(H, H)

    def forward(self, x: Tensor) -> Tensor:
        return self.mixer(self.output(F.gelu(self.intermediate(x))))


class GroupBertAttention(nn.Module):
    """BERT multi-head self-attention (q/k/v with biases, output projection), no LayerNorm inside."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.output = nn.Linear(H, H)
        self.dropout_p = config.attention_dropout

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        y = multi_head_attention(self.query(x), self.key(x), self.value(x), attn_mask, self.num_heads, dropout_p)
        return self.output(y)


# ----------------------------------------------------------------------------------------------
# The layer and the encoder


class GroupBertLayer(nn.Module):
    """Four pre-norm residual modules: conv, ffn1, attn, ffn2 (each with its own ``*_norm``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H, eps = config.hidden_size, config.eps
        self.conv_norm = nn.LayerNorm(H, eps=eps)
        self.conv = GroupBertConv(config)
        self.ffn1_norm = nn.LayerNorm(H, eps=eps)
        self.ffn1 = GroupBertGroupedFFN(config)
        self.attn_norm = nn.LayerNorm(H, eps=eps)
        self.attn = GroupBertAttention(config)
        self.ffn2_norm = nn.LayerNorm(H, eps=eps)
        self.ffn2 = GroupBertGroupedFFN(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, pad_mask: Tensor, segment_ids: Optional[Tensor] = None) -> Tensor:
        """x [B, T, H]; attn_mask additive ([B, 1, 1, T], packed [B, 1, T, T]); pad_mask [B, T] True at
        tokens; segment_ids [B, T] sequence numbers of packed rows (None: one sequence per row).

        x = x + Drop(Conv(LN(x)));  x = x + Drop(GFFN_1(LN(x)))
        x = x + Drop(MHSA(LN(x)));  x = x + Drop(GFFN_2(LN(x)))
        """
        x = x + self.dropout(self.conv(self.conv_norm(x), pad_mask, segment_ids))
        x = x + self.dropout(self.ffn1(self.ffn1_norm(x)))
        x = x + self.dropout(self.attn(self.attn_norm(x), attn_mask))
        x = x + self.dropout(self.ffn2(self.ffn2_norm(x)))
        return x


class GroupBertEncoder(nn.Module):
    """L GroupBERT layers, then the final LayerNorm that pre-norm stacks need."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList([GroupBertLayer(config) for _ in range(config.num_layers)])
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.eps)

    def forward(self, x: Tensor, attn_mask: Tensor, pad_mask: Tensor, segment_ids: Optional[Tensor] = None) -> Tensor:
        for layer in self.layer:
            x = layer(x, attn_mask, pad_mask, segment_ids)
        return self.final_norm(x)


# ----------------------------------------------------------------------------------------------
# Base model


def _check_sizes(config: ModelConfig) -> None:
    H = config.hidden_size
    rules = [
        (H % config.num_heads == 0, f"model.hidden_size ({H}) must be divisible by model.num_heads "
                                    f"({config.num_heads})"),
        (H % config.conv_group_size == 0, f"model.hidden_size ({H}) must be divisible by "
                                          f"model.conv_group_size ({config.conv_group_size})"),
        (config.conv_kernel_size % 2 == 1, f"model.conv_kernel_size ({config.conv_kernel_size}) must be odd "
                                           "for 'same' padding"),
        (config.intermediate_size % config.ffn_groups == 0,
         f"model.intermediate_size ({config.intermediate_size}) must be divisible by "
         f"model.ffn_groups ({config.ffn_groups})"),
        (H % config.ffn_groups == 0, f"model.hidden_size ({H}) must be divisible by "
                                     f"model.ffn_groups ({config.ffn_groups})"),
    ]
    for ok, message in rules:
        if not ok:
            raise ValueError(message)


class GroupBertModel(nn.Module):
    """BERT embeddings + GroupBERT encoder + BERT pooler."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_sizes(config)
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = GroupBertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated normal (±2σ, σ = 0.02) for every weight incl. grouped and conv, zero biases, LN 1/0.

        As Graphcore's TF code and optimum (which samples scipy ``truncnorm``), via ``trunc_normal_``.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, GroupedLinear)):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                cls_positions: Optional[Tensor] = None, segment_ids: Optional[Tensor] = None) -> EncoderOutput:
        """``segment_ids`` given = packed rows: attention and the conv stay inside each sequence (bert.py)."""
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # B, T, H
        attn_mask, pad_mask = encoder_masks(input_ids, attention_mask, segment_ids, x.dtype)
        x = self.encoder(x, attn_mask, pad_mask, segment_ids)
        return EncoderOutput(x, self.pooler(x, cls_positions) if self.pooler is not None else None)


# ----------------------------------------------------------------------------------------------
# Heads


class GroupBertForPreTraining(nn.Module):
    """GroupBERT with BERT's MLM + NSP heads; the MLM decoder is tied to the word embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bert = GroupBertModel(config)  # `bert.` prefix as BERT, so both share pipeline/param-group code
        self.cls = BertPreTrainingHeads(config)
        self.cls.apply(self.bert._init_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, masked_lm_positions: Optional[Tensor] = None,
                masked_lm_labels: Optional[Tensor] = None, next_sentence_label: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, cls_positions: Optional[Tensor] = None,
                segment_ids: Optional[Tensor] = None) -> PreTrainingOutput:
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, position_ids, cls_positions, segment_ids)
        mlm_logits, nsp_logits = self.cls(hidden, pooled, masked_lm_positions)
        return pretraining_loss(mlm_logits, nsp_logits, masked_lm_labels, next_sentence_label)
