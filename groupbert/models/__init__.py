"""Model zoo: BERT (Hugging Face names), GroupBERT and GPT-2, and ``build_model`` for pretraining
(MLM + NSP for BERT/GroupBERT, causal LM for GPT-2)."""
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
from groupbert.models.gpt2 import CausalLMOutput, GPT2LMHeadModel, GPT2Model
from groupbert.models.hf_bert import HFBertForPreTraining
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
    "gpt2": GPT2LMHeadModel,
    "hf_bert": HFBertForPreTraining,   # Hugging Face's own, MLM logits at every position: a baseline
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The pretraining model for ``cfg.type``."""
    if cfg.type not in PRETRAINING_MODELS:
        raise ValueError(f"model.type {cfg.type!r} is not one of {sorted(PRETRAINING_MODELS)}")
    return PRETRAINING_MODELS[cfg.type](cfg)


__all__ = [
    "BertForPreTraining", "BertModel", "BertPreTrainingHeads", "CausalLMOutput", "EncoderOutput",
    "GPT2LMHeadModel", "GPT2Model", "GroupBertConv",
    "GroupBertForPreTraining", "GroupBertGroupedFFN", "GroupBertLayer", "GroupBertModel", "GroupedLinear",
    "HFBertForPreTraining", "PRETRAINING_MODELS", "PreTrainingOutput", "additive_attention_mask", "build_model", "from_hf_config",
    "load_hf_state_dict", "padding_mask", "to_hf_config",
]
