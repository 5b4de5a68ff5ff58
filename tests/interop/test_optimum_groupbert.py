"""GroupBERT <-> optimum-graphcore's GroupBERT layout (groupbert/interop/optimum_groupbert.py).

The synthetic checkpoints here are built from an independent statement of optimum-graphcore's layout (the
names and shapes its modules define, huggingface/optimum-graphcore ``optimum/graphcore/models/groupbert/``
at b8cd6e09, under its pinned transformers 4.29), not by the exporter; and ``optimum_forward`` re-states
their forward pass in plain PyTorch on those names, so a mapping error shows as a logit difference.
"""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from groupbert.errors import BadInput
from groupbert.interop.optimum_groupbert import (
    InteropError,
    encoder_state_dict,
    export_groupbert,
    load_groupbert_dir,
    qa_state_dict,
)
from groupbert.models import GroupBertForPreTraining, GroupBertModel
from groupbert.models.qa import BertForQuestionAnswering

# ------------------------------------------------------------------------------------------------
# Their layout, stated independently


def their_config(**overrides) -> dict:
    """A config.json as optimum-graphcore writes it (GroupBertConfig = BertConfig keys + ffn_groups,
    conv_group_size, conv_kernel_size), at the tiny size of conftest's TINY_MODEL/TINY_GROUPBERT."""
    config = {
        "_name_or_path": "./run9", "architectures": ["PipelinedGroupBertForPreTraining"], "model_type": "groupbert",
        "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 36, "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 0.001,
        "initializer_range": 0.02, "conv_kernel_size": 7, "conv_group_size": 8, "ffn_groups": 4,
        "pad_token_id": 0, "position_embedding_type": "absolute", "classifier_dropout": None,
        "max_num_masked_tokens": 5, "torch_dtype": "float16", "transformers_version": "4.20.1", "use_cache": True,
    }
    config.update(overrides)
    return config


def their_table(c: dict, head: str = "pretraining") -> dict:
    """name -> shape of their ``state_dict()`` (torch layouts: Linear [out, in], Conv1d [out, in/groups, k]).

    groupbert_convolution.py: prenorm, glu Linear(H, 2H), groupconv Conv1d(H, H, K, groups=H/conv_group_size),
    conv_norm, output_projection. groupbert_ffn.py: intermediate_* = LayerNorm + dense(H, I); output_* =
    grouped_matmul Conv1d(I, H, 1, groups=ffn_groups) + dense_output_projection(H, H). groupbert_attention.py:
    LayerNorm, self.{query,key,value}, output.dense. modeling_groupbert.py: encoder LayerNorm, BERT
    embeddings/pooler/heads (the pooler in every head). ``bert.embeddings.position_ids`` is the persistent
    buffer of transformers < 4.31; ``cls.predictions.decoder.{weight,bias}`` are the tied copies.
    """
    H, I, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    V, P, TV = c["vocab_size"], c["max_position_embeddings"], c["type_vocab_size"]
    K, gs, G = c["conv_kernel_size"], c["conv_group_size"], c["ffn_groups"]
    t = {"bert.embeddings.position_ids": (1, P),
         "bert.embeddings.word_embeddings.weight": (V, H), "bert.embeddings.position_embeddings.weight": (P, H),
         "bert.embeddings.token_type_embeddings.weight": (TV, H),
         "bert.embeddings.LayerNorm.weight": (H,), "bert.embeddings.LayerNorm.bias": (H,)}

    def linear(name, n_out, n_in):
        t[name + ".weight"], t[name + ".bias"] = (n_out, n_in), (n_out,)

    def norm(name):
        t[name + ".weight"], t[name + ".bias"] = (H,), (H,)

    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        norm(p + "convolution.prenorm")
        linear(p + "convolution.glu", 2 * H, H)
        t[p + "convolution.groupconv.weight"], t[p + "convolution.groupconv.bias"] = (H, gs, K), (H,)
        norm(p + "convolution.conv_norm")
        linear(p + "convolution.output_projection", H, H)
        for w in ("first", "second"):
            norm(p + f"intermediate_{w}.LayerNorm")
            linear(p + f"intermediate_{w}.dense", I, H)
            t[p + f"output_{w}.grouped_matmul.weight"] = (H, I // G, 1)
            t[p + f"output_{w}.grouped_matmul.bias"] = (H,)
            linear(p + f"output_{w}.dense_output_projection", H, H)
        norm(p + "attention.LayerNorm")
        for proj in ("query", "key", "value"):
            linear(p + f"attention.self.{proj}", H, H)
        linear(p + "attention.output.dense", H, H)
    norm("bert.encoder.LayerNorm")
    linear("bert.pooler.dense", H, H)
    if head == "pretraining":
        t["cls.predictions.bias"] = (V,)
        linear("cls.predictions.transform.dense", H, H)
        norm("cls.predictions.transform.LayerNorm")
        t["cls.predictions.decoder.weight"], t["cls.predictions.decoder.bias"] = (V, H), (V,)
        linear("cls.seq_relationship", 2, H)
    elif head == "qa":
        linear("qa_outputs", 2, H)
    return t


#: What transformers' save convention leaves out (and what our exporter leaves out): the buffer and the
#: tied decoder copies, which from_pretrained restores.
NOT_SAVED = {"bert.embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


def synthetic_state(c: dict, head: str = "pretraining", seed: int = 0) -> dict:
    """Random tensors in their layout (LayerNorm gains around 1, everything else N(0, 0.2^2))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in their_table(c, head).items():
        if name == "bert.embeddings.position_ids":
            sd[name] = torch.arange(shape[1]).unsqueeze(0)
        elif "LayerNorm.weight" in name or "norm.weight" in name or "prenorm.weight" in name:
            sd[name] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            sd[name] = 0.2 * torch.randn(shape, generator=g)
    if head == "pretraining":
        sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
        sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].clone()
    return sd


def optimum_forward(sd: dict, c: dict, input_ids, token_type_ids, attention_mask, mask_value=-10000.0):
    """Their forward (eval mode), re-stated on their names: returns (mlm [B,T,V], nsp [B,2]) or, for a
    QA state dict, (start [B,T], end [B,T]). ``mask_value``: the additive mask transformers builds
    (-10000 up to 4.20; ``finfo.min`` after PR #17306), from which their conv recovers its 0/1 mask."""
    sd = {k: v.float() for k, v in sd.items()}
    H, nh, G = c["hidden_size"], c["num_attention_heads"], c["ffn_groups"]
    K, groups, eps = c["conv_kernel_size"], c["hidden_size"] // c["conv_group_size"], c["layer_norm_eps"]
    B, T = input_ids.shape

    def ln(x, p):
        return F.layer_norm(x, (H,), sd[p + ".weight"], sd[p + ".bias"], eps)

    def lin(x, p):
        return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])

    ext = (1.0 - attention_mask[:, None, None, :].float()) * mask_value          # B, 1, 1, T
    x = sd["bert.embeddings.word_embeddings.weight"][input_ids] \
        + sd["bert.embeddings.token_type_embeddings.weight"][token_type_ids] \
        + sd["bert.embeddings.position_embeddings.weight"][torch.arange(T)]
    x = ln(x, "bert.embeddings.LayerNorm")

    for i in range(c["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        # convolution: gate = first half of the GLU output, value = second half
        h = lin(ln(x, p + "convolution.prenorm"), p + "convolution.glu")
        h = h[..., H:] * torch.sigmoid(h[..., :H])
        conv_mask = (1.0 - ext / -10000.0)[:, 0, :].transpose(1, 2)              # B, T, 1
        h = F.conv1d((h * conv_mask).transpose(1, 2), sd[p + "convolution.groupconv.weight"],
                     sd[p + "convolution.groupconv.bias"], padding=(K - 1) // 2, groups=groups).transpose(1, 2)
        x = x + lin(F.silu(ln(h, p + "convolution.conv_norm")), p + "convolution.output_projection")
        for w in ("first", "second"):
            if w == "second":  # attention sits between the two FFNs
                a = ln(x, p + "attention.LayerNorm")
                q, k, v = (lin(a, p + f"attention.self.{n}").view(B, T, nh, H // nh).transpose(1, 2)
                           for n in ("query", "key", "value"))
                scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(H // nh)) + ext
                ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
                x = x + lin(ctx, p + "attention.output.dense")
            h = F.gelu(lin(ln(x, p + f"intermediate_{w}.LayerNorm"), p + f"intermediate_{w}.dense"))
            h = F.conv1d(h.transpose(1, 2), sd[p + f"output_{w}.grouped_matmul.weight"],
                         sd[p + f"output_{w}.grouped_matmul.bias"], groups=G).transpose(1, 2)
            x = x + lin(h, p + f"output_{w}.dense_output_projection")
    x = ln(x, "bert.encoder.LayerNorm")
    if "qa_outputs.weight" in sd:
        start, end = lin(x, "qa_outputs").unbind(-1)
        return start, end
    pooled = torch.tanh(lin(x[:, 0], "bert.pooler.dense"))
    t = ln(F.gelu(lin(x, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
    mlm = F.linear(t, sd["bert.embeddings.word_embeddings.weight"], sd["cls.predictions.bias"])
    return mlm, lin(pooled, "cls.seq_relationship")


def padded_batch(B=3, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 99, (B, T), generator=g)
    token_type_ids = (torch.arange(T) >= T // 2).long().expand(B, T).clone()
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, 11:] = 0
    attention_mask[2, 5:] = 0
    return input_ids, token_type_ids, attention_mask


def write_dir(path, config: dict, sd: dict, fmt: str = "safetensors"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    else:
        torch.save(sd, str(path / "pytorch_model.bin"))
    return path


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------
# (a) a synthetic checkpoint in their layout


@pytest.mark.parametrize("fmt", ["safetensors", "bin-fp16"])
def test_synthetic_optimum_checkpoint_loads_strict_and_computes_their_function(tmp_path, fmt):
    c = their_config()
    sd = synthetic_state(c)
    if fmt == "safetensors":  # transformers >= 4.31 save: no buffer, no tied copies
        sd = {k: v for k, v in sd.items() if k not in NOT_SAVED}
        write_dir(tmp_path, c, sd)
    else:  # the Hub file: torch.save of an fp16 state dict with the buffer and the tied copies (4.20.1)
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        write_dir(tmp_path, c, sd, fmt="bin")
    cfg, ours = load_groupbert_dir(tmp_path)
    assert (cfg.type, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.conv_group_size) == \
        ("groupbert", 32, 2, 36, 8)
    assert cfg.layer_norm_eps == 1e-3 and cfg.max_positions == 64
    assert all(v.dtype == torch.float32 for v in ours.values())
    model = GroupBertForPreTraining(cfg).eval()
    model.load_state_dict(ours, strict=True)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight

    batch = padded_batch()
    with torch.no_grad():
        out = model(*batch)
        mlm_ref, nsp_ref = optimum_forward(sd, c, *batch)
    real = batch[2].bool()
    d_mlm, d_nsp = max_diff(out.mlm_logits[real], mlm_ref[real]), max_diff(out.nsp_logits, nsp_ref)
    print(f"\n[{fmt}] ours vs re-stated optimum forward: max|d mlm| = {d_mlm:.3g}, max|d nsp| = {d_nsp:.3g}")
    assert d_mlm < 1e-4 and d_nsp < 1e-4
    # padded positions too: their conv masks exactly as ours with the -10000 mask of transformers 4.20
    assert max_diff(out.mlm_logits, mlm_ref) < 1e-4


def test_hand_checked_mappings(tmp_path):
    c = their_config()
    sd = synthetic_state(c, seed=3)
    _, ours = load_groupbert_dir(write_dir(tmp_path, c, sd))
    H, I, G = 32, 36, 4
    p, q = "bert.encoder.layer.1.", "bert.encoder.layer.1."
    # GLU: their rows [0, H) are the gate, [H, 2H) the value; ours F.glu wants [value | gate]
    assert torch.equal(ours[p + "conv.glu.weight"][:H], sd[q + "convolution.glu.weight"][H:])
    assert torch.equal(ours[p + "conv.glu.weight"][H:], sd[q + "convolution.glu.weight"][:H])
    assert torch.equal(ours[p + "conv.glu.bias"][3], sd[q + "convolution.glu.bias"][H + 3])
    # conv: same nn.Conv1d layout [H, conv_group_size, K]; output channel 13, input 5 of its group, tap 6
    assert ours[p + "conv.grouped_conv.weight"][13, 5, 6] == sd[q + "convolution.groupconv.weight"][13, 5, 6]
    # grouped FFN: group g = 2 maps intermediate channels [2*9, 3*9) to outputs [2*8, 3*8):
    # ours[g, j, o] = theirs[g*H/G + o, j, 0]
    theirs_w = sd[q + "output_second.grouped_matmul.weight"]
    block = ours[p + "ffn2.output.weight"][2]                                   # [I/G, H/G] = [9, 8]
    assert torch.equal(block, theirs_w[16:24, :, 0].T)
    assert ours[p + "ffn2.output.weight"][3, 8, 7] == theirs_w[3 * 8 + 7, 8, 0]
    # ... and as functions: our GroupedLinear equals their Conv1d(I, H, 1, groups=4) on any input
    model = GroupBertModel(load_groupbert_dir(tmp_path)[0])
    model.encoder.layer[1].ffn2.output.weight.data.copy_(ours[p + "ffn2.output.weight"])
    model.encoder.layer[1].ffn2.output.bias.data.copy_(ours[p + "ffn2.output.bias"])
    x = torch.randn(2, 5, I)
    want = F.conv1d(x.transpose(1, 2), theirs_w, sd[q + "output_second.grouped_matmul.bias"], groups=G).transpose(1, 2)
    torch.testing.assert_close(model.encoder.layer[1].ffn2.output(x), want)
    # renamed one-to-one
    assert torch.equal(ours[p + "ffn1.mixer.weight"], sd[q + "output_first.dense_output_projection.weight"])
    assert torch.equal(ours[p + "attn.output.bias"], sd[q + "attention.output.dense.bias"])
    assert torch.equal(ours[p + "conv_norm.weight"], sd[q + "convolution.prenorm.weight"])
    assert torch.equal(ours[p + "conv.norm.bias"], sd[q + "convolution.conv_norm.bias"])
    assert torch.equal(ours["bert.encoder.final_norm.weight"], sd["bert.encoder.LayerNorm.weight"])


def test_config_defaults_are_theirs(tmp_path):
    """Absent keys mean what BertConfig/GroupBertConfig default to, eps 1e-12 included (not our 1e-3)."""
    c = their_config()
    for key in ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob", "hidden_act"):
        del c[key]
    cfg, _ = load_groupbert_dir(write_dir(tmp_path, c, synthetic_state(c)))
    assert cfg.layer_norm_eps == 1e-12 and cfg.eps == 1e-12
    assert cfg.hidden_dropout == cfg.attention_dropout == 0.1
    c2 = their_config(hidden_size=64, intermediate_size=64, num_attention_heads=4)
    for key in ("conv_kernel_size", "conv_group_size", "ffn_groups"):
        del c2[key]
    cfg2, _ = load_groupbert_dir(write_dir(tmp_path / "b", c2, synthetic_state({**c2, "conv_kernel_size": 7,
                                                                                "conv_group_size": 16,
                                                                                "ffn_groups": 4})))
    assert (cfg2.conv_kernel_size, cfg2.conv_group_size, cfg2.ffn_groups) == (7, 16, 4)


# ------------------------------------------------------------------------------------------------
# (b) round trips, (c) exported names/shapes


def _random_model(cls, cfg, seed=0):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # move every parameter off its init (LN gains 1, zero biases hide mix-ups)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_pretraining_round_trip_and_their_forward(tmp_path, tiny_model_config):
    cfg = tiny_model_config("groupbert")
    model = _random_model(GroupBertForPreTraining, cfg)
    config, state = export_groupbert(model, cfg)
    assert config["architectures"] == ["GroupBertForPreTraining"] and config["model_type"] == "groupbert"
    assert config["layer_norm_eps"] == 1e-3 and config["hidden_act"] == "gelu"
    write_dir(tmp_path, config, state)
    cfg2, ours = load_groupbert_dir(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, layer_norm_eps=1e-3)  # the effective eps, written out
    own = model.state_dict()
    assert ours.keys() == own.keys()
    assert all(torch.equal(ours[k], own[k]) for k in own)
    back = GroupBertForPreTraining(cfg2).eval()
    back.load_state_dict(ours, strict=True)
    batch = padded_batch()
    with torch.no_grad():
        a, b = model(*batch), back(*batch)
        mlm_ref, nsp_ref = optimum_forward(state, config, *batch)
    d = max(max_diff(a.mlm_logits, b.mlm_logits), max_diff(a.nsp_logits, b.nsp_logits))
    d_ref = max(max_diff(a.mlm_logits, mlm_ref), max_diff(a.nsp_logits, nsp_ref))
    print(f"\npretraining: round trip max|d| = {d:.3g}; exported weights in the re-stated optimum forward "
          f"max|d| = {d_ref:.3g}")
    assert d == 0.0
    assert d_ref < 1e-4


def test_qa_round_trip_and_their_forward(tmp_path, tiny_model_config):
    cfg = tiny_model_config("groupbert")
    model = _random_model(BertForQuestionAnswering, cfg, seed=1)
    config, state = export_groupbert(model, cfg)
    assert config["architectures"] == ["GroupBertForQuestionAnswering"]
    # their QA GroupBertModel keeps a pooler (add_pooling_layer ignored); ours has none: written as zeros
    assert not state["bert.pooler.dense.weight"].any() and not state["bert.pooler.dense.bias"].any()
    write_dir(tmp_path, config, state)
    cfg2, ours = load_groupbert_dir(tmp_path)
    back = BertForQuestionAnswering(cfg2).eval()
    back.load_state_dict(qa_state_dict(ours), strict=True)
    fresh = BertForQuestionAnswering(cfg2).eval()
    fresh.bert.load_state_dict(encoder_state_dict(ours), strict=True)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    batch = padded_batch()
    with torch.no_grad():
        a, b = model(*batch), back(*batch)
        start_ref, end_ref = optimum_forward(state, config, *batch)
    d = max(max_diff(a.start_logits, b.start_logits), max_diff(a.end_logits, b.end_logits))
    d_ref = max(max_diff(a.start_logits, start_ref), max_diff(a.end_logits, end_ref))
    print(f"\nqa: round trip max|d| = {d:.3g}; exported weights in the re-stated optimum forward max|d| = {d_ref:.3g}")
    assert d == 0.0 and d_ref < 1e-4


@pytest.mark.parametrize("head", ["pretraining", "qa", "base"])
def test_exported_names_and_shapes_equal_their_table(tiny_model_config, head):
    cfg = tiny_model_config("groupbert")
    cls = {"pretraining": GroupBertForPreTraining, "qa": BertForQuestionAnswering, "base": GroupBertModel}[head]
    config, state = export_groupbert(cls(cfg), cfg)
    table = {k: v for k, v in their_table(their_config(), head).items() if k not in NOT_SAVED}
    if head == "base":  # HF base models save without the ``bert.`` prefix
        table = {k[len("bert."):]: v for k, v in table.items()}
        assert config["architectures"] == ["GroupBertModel"]
    assert {k: tuple(v.shape) for k, v in state.items()} == table
    keys = set(their_config()) - {"_name_or_path", "architectures", "classifier_dropout", "max_num_masked_tokens",
                                  "torch_dtype", "transformers_version", "use_cache"}
    assert {k: config[k] for k in keys} == {k: their_config()[k] for k in keys}
    assert config["torch_dtype"] == "float32"


def test_headless_directory_gets_the_bert_prefix(tmp_path, tiny_model_config):
    cfg = tiny_model_config("groupbert")
    model = _random_model(GroupBertModel, cfg, seed=2)
    config, state = export_groupbert(model, cfg)
    _, ours = load_groupbert_dir(write_dir(tmp_path, config, state))
    assert all(k.startswith("bert.") for k in ours)
    back = GroupBertModel(cfg)
    back.load_state_dict({k[len("bert."):]: v for k, v in ours.items()}, strict=True)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


def test_later_transformers_mask_leaks_padding_into_their_conv():
    """Not bridgeable: with transformers' finfo.min additive mask their conv mask (1 - m / -10000) is not
    0/1, so padded rows differ near the padding; unpadded rows agree with ours either way."""
    c = their_config()
    sd = synthetic_state(c, seed=5)
    batch = padded_batch()
    with torch.no_grad():
        old, _ = optimum_forward(sd, c, *batch)
        new, _ = optimum_forward(sd, c, *batch, mask_value=torch.finfo(torch.float32).min)
    assert max_diff(old[0], new[0]) < 1e-4                     # row 0 has no padding
    assert not torch.allclose(old[2, :5], new[2, :5], atol=1e-2)  # row 2: real tokens next to padding


# ------------------------------------------------------------------------------------------------
# (d) refusals


@pytest.mark.parametrize("key, value", [
    ("model_type", "bert"),
    ("hidden_act", "gelu_new"),
    ("hidden_act", "relu"),
    ("position_embedding_type", "relative_key"),
    ("is_decoder", True),
    ("add_cross_attention", True),
    ("tie_word_embeddings", False),
    ("conv_kernel_size", 6),
    ("conv_group_size", 5),
    ("ffn_groups", 5),
    ("num_attention_heads", 5),
    ("hidden_size", "32"),
    ("num_hidden_layers", 0),
    ("layer_norm_eps", 0.0),
    ("layer_norm_eps", float("nan")),
    ("hidden_dropout_prob", 1.5),
    ("pruned_heads", {"0": [1]}),
])
def test_bad_config_values_are_refused_naming_the_key(tmp_path, key, value):
    c = their_config()
    write_dir(tmp_path, their_config(**{key: value}), synthetic_state(c))
    with pytest.raises(InteropError) as e:
        load_groupbert_dir(tmp_path)
    assert isinstance(e.value, BadInput) and isinstance(e.value, ValueError)
    assert e.value.key == key
    assert f"key '{key}'" in str(e.value) and repr(value)[:12] in str(e.value)


def _mutated(mutate):
    c = their_config()
    sd = synthetic_state(c)
    mutate(sd)
    return c, sd


@pytest.mark.parametrize("name, mutate, key", [
    ("unknown head", lambda sd: sd.update({"lm_head.weight": torch.zeros(3, 32)}), "lm_head.weight"),
    ("unknown layer part", lambda sd: sd.update({"bert.encoder.layer.0.convolution.extra.weight": torch.zeros(3)}),
     "bert.encoder.layer.0.convolution.extra.weight"),
    ("missing layer weight", lambda sd: sd.pop("bert.encoder.layer.1.attention.self.key.bias"),
     "bert.encoder.layer.1.attn.key.bias"),
    ("extra layer", lambda sd: sd.update({"bert.encoder.layer.2.attention.LayerNorm.bias": torch.zeros(32)}),
     "bert.encoder.layer.2.attn_norm.bias"),
    ("untied decoder", lambda sd: sd["cls.predictions.decoder.weight"].add_(1.0), "cls.predictions.decoder.weight"),
    ("decoder bias", lambda sd: sd["cls.predictions.decoder.bias"].add_(1.0), "cls.predictions.decoder.bias"),
    ("positions", lambda sd: sd.__setitem__("bert.embeddings.position_ids", sd["bert.embeddings.position_ids"].flip(1)),
     "bert.embeddings.position_ids"),
    ("grouped shape", lambda sd: sd.__setitem__("bert.encoder.layer.0.output_first.grouped_matmul.weight",
                                                torch.zeros(32, 36, 1)),
     "bert.encoder.layer.0.output_first.grouped_matmul.weight"),
    ("glu shape", lambda sd: sd.__setitem__("bert.encoder.layer.0.convolution.glu.weight", torch.zeros(32, 32)),
     "bert.encoder.layer.0.conv.glu.weight"),
])
def test_bad_weights_are_refused_naming_the_key(tmp_path, name, mutate, key):
    c, sd = _mutated(mutate)
    write_dir(tmp_path, c, sd)
    with pytest.raises(InteropError) as e:
        load_groupbert_dir(tmp_path)
    assert e.value.key == key, (name, str(e.value))


def test_other_task_head_is_passed_on_unconverted(tmp_path):
    """A GroupBertForSequenceClassification directory: encoder converted, ``classifier`` returned as is."""
    c = their_config(architectures=["GroupBertForSequenceClassification"])
    sd = synthetic_state(c, head="none")
    sd["classifier.weight"], sd["classifier.bias"] = torch.randn(3, 32), torch.randn(3)
    _, ours = load_groupbert_dir(write_dir(tmp_path, c, sd))
    assert torch.equal(ours["classifier.weight"], sd["classifier.weight"])
    assert not any(k.startswith("cls.") for k in ours)
    model = BertForQuestionAnswering(load_groupbert_dir(tmp_path)[0])
    model.bert.load_state_dict(encoder_state_dict(ours), strict=True)


def test_unreadable_directories_are_refused(tmp_path):
    with pytest.raises(InteropError, match="no config.json"):
        load_groupbert_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(their_config()))
    with pytest.raises(InteropError, match="no weights"):
        load_groupbert_dir(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(InteropError, match="cannot read weights"):
        load_groupbert_dir(tmp_path)
    write_dir(tmp_path, their_config(architectures=["BertForPreTraining"]), synthetic_state(their_config()))
    with pytest.raises(InteropError) as e:
        load_groupbert_dir(tmp_path)
    assert e.value.key == "architectures"


def test_export_refuses_what_is_not_groupbert(tiny_model_config):
    bert_cfg = tiny_model_config("bert")
    with pytest.raises(InteropError) as e:
        export_groupbert(BertForQuestionAnswering(bert_cfg), bert_cfg)
    assert e.value.key == "model.type"
    cfg = tiny_model_config("groupbert")
    with pytest.raises(InteropError) as e:
        export_groupbert(GroupBertForPreTraining(cfg), tiny_model_config("groupbert", conv_kernel_size=5))
    assert e.value.key == "model.conv_kernel_size"
