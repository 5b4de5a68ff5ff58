"""Model zoo: BERT (Hugging Face names) and GroupBERT, and ``build_model`` choosing by ``model.type``."""
from torch import nn

from groupbert.config import ModelConfig
from groupbert.models.bert import (
    BertForPreTraining,
    BertModel,
    BertPreTrainingHeads,
    EncoderOutput,
    PreTrainingOutput,
    additive_attention_mask,
    from_hf_config,
    load_hf_state_dict,
    padding_mask,
    to_hf_config,
)
from groupbert.models.groupbert import (
    GroupBertConv,
    GroupBertForPreTraining,
    GroupBertGroupedFFN,
    GroupBertLayer,
    GroupBertModel,
    GroupedLinear,
)

# model.type -> pretraining model
PRETRAINING_MODELS = {
    "bert": BertForPreTraining,
    "groupbert": GroupBertForPreTraining,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The MLM + NSP pretraining model for ``cfg.type``."""
    if cfg.type not in PRETRAINING_MODELS:
        raise ValueError(f"model.type {cfg.type!r} is not one of {sorted(PRETRAINING_MODELS)}")
    return PRETRAINING_MODELS[cfg.type](cfg)


__all__ = [
    "BertForPreTraining", "BertModel", "BertPreTrainingHeads", "EncoderOutput", "GroupBertConv",
    "GroupBertForPreTraining", "GroupBertGroupedFFN", "GroupBertLayer", "GroupBertModel", "GroupedLinear",
    "PRETRAINING_MODELS", "PreTrainingOutput", "additive_attention_mask", "build_model", "from_hf_config",
    "load_hf_state_dict", "padding_mask", "to_hf_config",
]
