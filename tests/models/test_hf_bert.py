"""``model.type: hf_bert`` (Hugging Face's BertForPreTraining with MLM logits at every position) against
transformers' own loss and against our BERT holding the same weights, which runs the head at the masked
positions only: the two must give the same losses, and the FLOP count must be the counter's."""
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from groupbert.config import ConfigError, load_config
from groupbert.data.columns import IGNORE_INDEX
from groupbert.models import build_model
from groupbert.models.bert import BertForPreTraining, load_hf_state_dict
from groupbert.models.flops import forward_flops
from groupbert.models.hf_bert import HFBertForPreTraining, full_sequence_labels

B, T, P = 3, 16, 4


def _batch(vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    positions = torch.tensor([[1, 4, 7, 0], [2, 3, 0, 0], [5, 9, 11, 15]])   # 0 = padding slot
    labels = torch.randint(5, vocab, (B, P), generator=g)
    labels[positions == 0] = IGNORE_INDEX
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 12:] = 0
    return {"input_ids": ids, "token_type_ids": (torch.arange(T) >= T // 2).long().expand(B, T).contiguous(),
            "attention_mask": mask, "masked_lm_positions": positions, "masked_lm_labels": labels,
            "next_sentence_label": torch.tensor([0, 1, 1])}


def test_full_sequence_labels_by_hand():
    ids = torch.zeros(1, 6, dtype=torch.long)
    labels = full_sequence_labels(ids, torch.tensor([[2, 5, 0]]), torch.tensor([[7, 9, IGNORE_INDEX]]))
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX, 9]]


def test_loss_is_transformers_own_and_equals_our_bert_with_the_same_weights(tiny_model_config):
    torch.manual_seed(0)
    cfg = replace(tiny_model_config("bert"), type="hf_bert")
    model = build_model(cfg)
    assert isinstance(model, HFBertForPreTraining)
    batch = _batch(cfg.vocab_size)
    out = model(**batch)

    # transformers computing its own loss from the full [B, T] labels
    full = full_sequence_labels(batch["input_ids"], batch["masked_lm_positions"], batch["masked_lm_labels"])
    theirs = model.hf(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                      attention_mask=batch["attention_mask"], labels=full,
                      next_sentence_label=batch["next_sentence_label"])
    torch.testing.assert_close(out.loss, theirs.loss, rtol=1e-6, atol=1e-6)

    # our BERT with the Hugging Face weights: the head at the masked positions gives the same losses
    ours = BertForPreTraining(replace(cfg, type="bert"))
    load_hf_state_dict(ours, model.hf.state_dict())
    ref = ours(**batch)
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_logits", "nsp_logits"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-5, atol=1e-5, msg=name)

    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "position_ids" not in n)


def test_flops_count_the_head_at_every_position(tiny_model_config):
    cfg = replace(tiny_model_config("bert"), type="hf_bert")
    model = build_model(cfg)
    model.hf.config._attn_implementation = "eager"   # the counter sees both attention matmuls
    batch = _batch(cfg.vocab_size)
    with FlopCounterMode(display=False) as counter:
        model(**batch)
    assert forward_flops(cfg, B, T, P) == counter.get_total_flops()
    bert = replace(cfg, type="bert")
    assert forward_flops(cfg, B, T, P) == forward_flops(bert, B, T, None)   # = BERT's head at all T positions
    assert forward_flops(cfg, B, T, P) > forward_flops(bert, B, T, P)


def test_packing_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("configs/groupbert/tiny_phase1.yaml", ["model.type=hf_bert", "data.packing=true"])
    assert "data.packing" in str(e.value)
