"""Our GPT-2 against Hugging Face ``transformers.GPT2LMHeadModel`` (random tiny weights, no download)."""
import math

import pytest
import torch

from groupbert.config import ModelConfig
from groupbert.models.gpt2 import (
    TRANSPOSED,
    GPT2LMHeadModel,
    GPT2Model,
    from_hf_config,
    load_hf_state_dict,
    to_hf_config,
    to_hf_state_dict,
)

transformers = pytest.importorskip("transformers")

VOCAB = 99  # the shared tiny model's (conftest.py)


@pytest.fixture(scope="module")
def gpt2_config(tiny_model_config):
    def make(**kwargs):
        # the shared tiny model: deliberately odd intermediate size (not 4H); GPT-2's LayerNorm eps given explicitly
        return tiny_model_config("gpt2", hidden_dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-5, **kwargs)
    return make


@pytest.fixture(scope="module")
def hf_gpt2_config(gpt2_config):
    def make(**kwargs):
        # HF GPT2ModelTester-like: the tiny model's sizes (n_inner: HF's 4H); bos/eos inside the tiny vocab
        # (GPT-2's <|endoftext|> is the last id)
        m = gpt2_config()
        return transformers.GPT2Config(vocab_size=m.vocab_size, n_embd=m.hidden_size, n_layer=m.num_layers,
                                       n_head=m.num_heads, n_positions=m.max_positions,
                                       bos_token_id=m.vocab_size - 1, eos_token_id=m.vocab_size - 1, **kwargs)
    return make


def _ids(B=3, T=12, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_and_ours(hf_gpt2_config):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_gpt2_config()).eval()
    ours = GPT2LMHeadModel(from_hf_config(hf.config)).eval()
    load_hf_state_dict(ours, hf.state_dict())
    return hf, ours


def test_logits_and_loss_match_hf(hf_and_ours):
    hf, ours = hf_and_ours
    input_ids = _ids()
    labels = input_ids.clone()
    labels[0, 5:] = -100  # ignored positions, as padding would be
    with torch.no_grad():
        ref = hf(input_ids=input_ids, labels=labels)
        out = ours(input_ids, labels=labels)
        no_labels = ours(input_ids)
    assert out.logits.shape == (3, 12, VOCAB)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert no_labels.loss is None


def test_padding_mask_matches_hf_at_tokens(hf_and_ours):
    hf, ours = hf_and_ours
    input_ids = _ids()
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0  # right padding
    attention_mask[2, :3] = 0  # left padding: its first rows have no token to attend to
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask).logits
        out = ours(input_ids, attention_mask=attention_mask).logits
    assert torch.isfinite(out).all()
    keep = attention_mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)


def test_round_trip_to_hf_gives_identical_logits(gpt2_config):
    torch.manual_seed(1)
    ours = GPT2LMHeadModel(gpt2_config()).eval()
    hf = transformers.GPT2LMHeadModel(to_hf_config(ours.config)).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=True)
    assert hf.transformer.h[0].mlp.c_fc.weight.shape == (32, 37)  # Conv1D [in, out]
    input_ids = _ids(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids).logits, hf(input_ids=input_ids).logits, atol=1e-5, rtol=1e-5)
    # and back again: key for key, transposes undone
    again = GPT2LMHeadModel(from_hf_config(hf.config))
    load_hf_state_dict(again, hf.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, atol=0, rtol=0)


def test_attention_is_causal(gpt2_config):
    torch.manual_seed(2)
    model = GPT2LMHeadModel(gpt2_config()).eval()
    input_ids = _ids(B=2, T=10, seed=2)
    changed = input_ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(input_ids).logits, model(changed).logits
        masked = model(changed, attention_mask=torch.ones_like(changed)).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    torch.testing.assert_close(masked, b, atol=1e-6, rtol=1e-6)  # the mask path is causal too


def test_lm_head_tied_and_configs_round_trip(hf_and_ours, hf_gpt2_config):
    hf, ours = hf_and_ours
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert ours.lm_head.bias is None
    assert isinstance(ours.transformer.h, torch.nn.ModuleList) and len(ours.transformer.h) == 2
    cfg = from_hf_config(hf.config)
    assert (cfg.type, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == ("gpt2", 32, 2, 4)
    assert cfg.intermediate_size == 128 and cfg.max_positions == 64 and cfg.eps == 1e-5  # n_inner None -> 4H
    back = to_hf_config(cfg)
    for key in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "initializer_range"):
        assert getattr(back, key) == getattr(hf.config, key), key
    assert back.n_inner == 128 and back.activation_function == "gelu_new"
    with pytest.raises(ValueError, match="gpt2"):
        to_hf_config(ModelConfig(type="bert"))
    with pytest.raises(ValueError, match="activation_function"):
        from_hf_config(hf_gpt2_config(activation_function="relu"))


def test_scaled_residual_init(gpt2_config):
    torch.manual_seed(3)
    L = 8
    model = GPT2LMHeadModel(gpt2_config(vocab_size=512, hidden_size=256, num_layers=L, num_heads=4,
                                        intermediate_size=1024))

    def std(suffix):  # pooled over all layers: ~0.5-2M samples, relative sampling error ~0.1%
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith(suffix)]).std()

    residual = 0.02 / math.sqrt(2 * L)
    assert std("attn.c_proj.weight").item() == pytest.approx(residual, rel=0.03)
    assert std("mlp.c_proj.weight").item() == pytest.approx(residual, rel=0.03)
    for suffix in ("attn.c_attn.weight", "mlp.c_fc.weight", "wte.weight", "wpe.weight"):
        assert std(suffix).item() == pytest.approx(0.02, rel=0.03), suffix
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            assert torch.all(p == 1), name


def test_loss_decreases_with_adamw(gpt2_config):
    torch.manual_seed(4)
    model = GPT2LMHeadModel(gpt2_config()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    input_ids = _ids(B=4, T=16, seed=4)
    losses = []
    for _ in range(20):
        loss = model(input_ids, labels=input_ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.1)  # near-uniform at init
    assert losses[-1] < 0.5 * losses[0], losses


def test_all_ignored_labels_give_zero_loss(gpt2_config):
    model = GPT2LMHeadModel(gpt2_config())
    input_ids = _ids()
    out = model(input_ids, labels=torch.full_like(input_ids, -100))
    out.loss.backward()
    assert out.loss.item() == 0.0


def test_strict_load_lists_bad_keys(hf_and_ours):
    hf, _ = hf_and_ours
    model = GPT2LMHeadModel(from_hf_config(hf.config))
    sd = dict(hf.state_dict())
    sd.pop("transformer.h.1.ln_2.bias")
    sd["transformer.h.0.attn.extra.weight"] = torch.zeros(1)
    sd["transformer.wpe.weight"] = torch.zeros(32, 32)
    with pytest.raises(ValueError, match=r"missing.*h\.1\.ln_2\.bias.*unexpected.*extra.*shape mismatch.*wpe"):
        load_hf_state_dict(model, sd)
    before = model.transformer.wpe.weight.clone()
    load_hf_state_dict(model, sd, strict=False)  # loads the rest, skips the bad keys
    torch.testing.assert_close(model.transformer.wpe.weight, before, atol=0, rtol=0)
    torch.testing.assert_close(model.transformer.h[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.weight.t())

    untied = dict(hf.state_dict())
    untied["lm_head.weight"] = untied["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head not tied"):
        load_hf_state_dict(model, untied)


def test_load_variants_old_buffers_headless_and_no_lm_head(hf_and_ours):
    hf, ours = hf_and_ours
    # older HF checkpoints carry causal-mask buffers and no lm_head.weight (tied)
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    model = GPT2LMHeadModel(from_hf_config(hf.config)).eval()
    load_hf_state_dict(model, sd)
    input_ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, ours(input_ids).logits, atol=0, rtol=0)
    # headless: HF GPT2Model keys (no prefix), and a full LM checkpoint into the headless model
    for state in (hf.transformer.state_dict(), hf.state_dict()):
        base = GPT2Model(from_hf_config(hf.config)).eval()
        load_hf_state_dict(base, state)
        with torch.no_grad():
            ref = hf.transformer(input_ids=input_ids).last_hidden_state
            torch.testing.assert_close(base(input_ids), ref, atol=1e-5, rtol=1e-5)
    assert set(to_hf_state_dict(base)) == set(hf.transformer.state_dict())
    assert all(k.endswith(TRANSPOSED) for k in to_hf_state_dict(base) if k.endswith(".weight") and "c_" in k)


def test_from_pretrained_dir(hf_and_ours, tmp_path):
    hf, _ = hf_and_ours
    hf.save_pretrained(tmp_path)  # safetensors; HF drops the tied lm_head.weight from the file
    model = GPT2LMHeadModel.from_pretrained_dir(str(tmp_path))
    assert not model.training
    input_ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, hf(input_ids=input_ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError):
        GPT2LMHeadModel.from_pretrained_dir(str(tmp_path / "nope"))


def test_rejects_bad_sizes(gpt2_config):
    with pytest.raises(ValueError, match="num_heads"):
        GPT2LMHeadModel(gpt2_config(num_heads=5))
    model = GPT2LMHeadModel(gpt2_config(max_positions=8))
    with pytest.raises(ValueError, match="max_positions"):
        model(_ids(T=9))
