"""GroupBERT in the checkpoint layout of optimum-graphcore's GroupBERT, both ways.

optimum-graphcore (huggingface/optimum-graphcore, ``optimum/graphcore/models/groupbert/``, read at main
b8cd6e09; it pins ``transformers==4.29.2`` in ``setup.py``) is the PopTorch GroupBERT that Graphcore's
released weights ``Graphcore/groupbert-base-uncased`` (H 768, L 12, conv_kernel_size 7, conv_group_size 16,
ffn_groups 4; an fp16 ``pytorch_model.bin``) were trained and saved with. This module turns such a directory
into our :class:`~groupbert.config.ModelConfig` and a state dict in our names (:func:`load_groupbert_dir`),
so those weights can start a phase 2 or a SQuAD fine-tune here, and turns our pretraining or SQuAD GroupBERT
into their ``config.json`` + state dict (:func:`export_groupbert`).

Facts from their code (paths under ``optimum/graphcore/models/groupbert/``):

- Config (``modeling_groupbert.py`` l.59-95): ``GroupBertConfig(BertConfig)``, ``model_type "groupbert"``,
  BERT's keys and defaults (``layer_norm_eps`` 1e-12, dropouts 0.1, ``hidden_act "gelu"``) plus
  ``ffn_groups=4``, ``conv_group_size=16`` (channels per conv group), ``conv_kernel_size=7``. Every LayerNorm
  reads ``layer_norm_eps``. Classes (l.296-399, registered with the Auto classes in ``__init__.py``
  l.42-49): ``GroupBertModel(BertModel)``, ``GroupBertForPreTraining`` and ``GroupBertForQuestionAnswering``
  (BERT's heads around a ``GroupBertModel``); ``Pipelined*`` subclasses (l.402-) keep the same names.
  ``GroupBertModel.__init__`` ignores ``add_pooling_layer`` (l.299-302), so the QA model has a pooler too.
- Layer (l.98-194): ``convolution`` -> (``intermediate_first``, ``output_first``) -> ``attention`` ->
  (``intermediate_second``, ``output_second``), each a pre-norm residual; the encoder ends in ``LayerNorm``
  (l.202, applied l.270). Ours is the same order (``conv``, ``ffn1``, ``attn``, ``ffn2``, ``final_norm``).
- Conv (``groupbert_convolution.py`` l.39-90): ``prenorm`` LN -> ``glu`` Linear(H, 2H) whose output's
  **first half is the gate** (sigmoid) and second half the value (l.68-71) -> times the padding mask
  (l.74-76) -> ``groupconv`` = ``nn.Conv1d(H, H, K, padding=(K-1)//2, groups=H/conv_group_size)`` (l.43-49;
  weight [H, conv_group_size, K], as ours) -> ``conv_norm`` LN -> SiLU -> ``output_projection`` -> dropout ->
  + input. Our ``F.glu`` takes [value | gate]: the two halves of ``glu.weight``/``glu.bias`` are swapped.
- Grouped FFN (``groupbert_ffn.py`` l.29-75): ``intermediate_*`` = ``LayerNorm`` -> ``dense`` (H->I) ->
  ``hidden_act``; ``output_*`` = ``grouped_matmul`` = ``nn.Conv1d(I, H, 1, groups=ffn_groups)`` on the
  transposed sequence (weight [H, I/G, 1]: output channel ``g*H/G + p`` reads input channels
  ``g*I/G + j``, no interleaving) -> ``dense_output_projection`` (H->H) -> dropout -> + residual. Ours
  (:class:`~groupbert.models.groupbert.GroupedLinear`) stores ``[G, I/G, H/G]``:
  ``ours[g, j, p] = theirs[g*H/G + p, j, 0]``.
- Attention (``groupbert_attention.py`` l.32-172): ``LayerNorm`` -> BERT self-attention with separate
  ``self.query/key/value`` Linears (concatenated only at run time, l.33-50), scores times 1/sqrt(d) (l.110)
  -> ``output.dense`` -> dropout -> + residual (no LayerNorm in ``output``, l.145-159).
- Dropout: once per branch after the last projection, plus attention-probability dropout: as ours.
- Outside the layers the names are transformers' BERT names, as ours: ``bert.embeddings.*``,
  ``bert.pooler.dense``, ``cls.predictions.{bias, transform.dense, transform.LayerNorm}``,
  ``cls.seq_relationship``, ``qa_outputs`` ([2, H]: start, end). transformers 4.20/4.29 also save the
  ``bert.embeddings.position_ids`` buffer [1, P] and the tied ``cls.predictions.decoder.{weight,bias}``.

Name map per layer (``bert.encoder.layer.{i}.`` prefix on both sides; LN/Linear ``weight``+``bias``)::

    ours                      theirs
    conv_norm                 convolution.prenorm
    conv.glu                  convolution.glu                           (halves swapped)
    conv.grouped_conv         convolution.groupconv
    conv.norm                 convolution.conv_norm
    conv.output               convolution.output_projection
    ffn{1,2}_norm             intermediate_{first,second}.LayerNorm
    ffn{1,2}.intermediate     intermediate_{first,second}.dense
    ffn{1,2}.output           output_{first,second}.grouped_matmul      (weight re-laid, bias as is)
    ffn{1,2}.mixer            output_{first,second}.dense_output_projection
    attn_norm                 attention.LayerNorm
    attn.{query,key,value}    attention.self.{query,key,value}
    attn.output               attention.output.dense
    (bert.encoder.final_norm  bert.encoder.LayerNorm)

What the conversion keeps, adds and refuses:

- ``layer_norm_eps`` is carried as given, into :attr:`ModelConfig.layer_norm_eps` (never left to our
  GroupBERT default of 1e-3); a ``config.json`` without it means BertConfig's 1e-12, as their code reads
  it. The Hub repo's ``config.json`` on ``main`` says 1e-12 while the published recipe
  (``examples/language-modeling/README.md``, GroupBERT-base) trains with ``layer_norm_eps=0.001`` and some
  revisions of the repo say 0.001: the value is honoured (logged) - edit ``config.json`` if you know better.
- Weights are cast to float32 (the Hub file is fp16). The ``position_ids`` buffer must be ``arange``, a
  saved ``cls.predictions.decoder.weight`` must equal the word embeddings and ``decoder.bias`` must equal
  ``cls.predictions.bias`` (ours are tied); otherwise the directory is refused.
- Refused, naming the key and value (:class:`InteropError`): ``model_type`` other than ``groupbert``;
  ``hidden_act`` other than ``"gelu"`` (exact erf GELU, ours); ``position_embedding_type`` other than
  ``"absolute"``; ``is_decoder``/``add_cross_attention``; ``tie_word_embeddings: false``; pruned heads;
  sizes that do not divide (their code would fail too); an even ``conv_kernel_size`` (their padding
  ``(K-1)//2`` then shortens the sequence by one); and any weight name this map does not know. The
  ``classifier.*`` head of their other task classes is returned unconverted (no model here has it).
- Exported: ``architectures`` ``GroupBertForPreTraining`` or ``GroupBertForQuestionAnswering`` (a bare
  :class:`~groupbert.models.groupbert.GroupBertModel` gives ``GroupBertModel``, keys without ``bert.``);
  transformers' save convention: no ``position_ids`` buffer and no tied decoder copies (their
  ``from_pretrained`` re-ties them). Our QA model has no pooler, theirs does: the export writes a zero
  ``bert.pooler.dense`` (the span head never reads it).

Differences no weight mapping bridges (documented, not converted away):

- Padding mask in the conv: theirs rebuilds the 0/1 mask from the extended additive attention mask as
  ``1 - mask / -10000`` (``groupbert_convolution.py`` l.55-58). That is exact while transformers builds
  the additive mask with -10000; PR huggingface/transformers#17306 (opened May 2022) switched it to
  ``finfo(dtype).min``, which their pinned 4.29.2 has (whether 4.20.1, the Hub weights'
  ``transformers_version``, already had it was not checked). Then padded positions are multiplied by
  about -3.4e34 (fp32; -5.55 in fp16) instead of 0 and leak into the real tokens within K//2 of the
  padding. Ours uses the 0/1 padding mask itself, i.e. their intended function: outputs agree (to float
  rounding) on rows without padding always, and on padded rows with the -10000 mask.
- Their word embedding has ``padding_idx = pad_token_id`` (transformers' ``BertEmbeddings``): row 0 gets no
  gradient there. Ours has none (``bert.py``). Forward values are the same; fine-tuning updates that row.
- Their pipelined pretraining model picks the masked positions with ``topk`` over the labels
  (``max_num_masked_tokens``, a training-time key we ignore); ours takes ``masked_lm_positions``.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from groupbert.config import ModelConfig
from groupbert.interop.errors import InteropError
from groupbert.models.groupbert import GroupBertForPreTraining, GroupBertModel

logger = logging.getLogger(__name__)

MODEL_TYPE = "groupbert"
PRETRAINING_ARCHITECTURE = "GroupBertForPreTraining"      # modeling_groupbert.py l.330
QA_ARCHITECTURE = "GroupBertForQuestionAnswering"         # modeling_groupbert.py l.390
BASE_ARCHITECTURE = "GroupBertModel"                      # modeling_groupbert.py l.296
#: Our state-dict prefix of the encoder (embeddings, layers, final LayerNorm, pooler) in every head model.
ENCODER_PREFIX = "bert."
POOLER_PREFIX = "bert.pooler."
#: Heads of their other classes (``GroupBertFor{SequenceClassification,TokenClassification,MultipleChoice}``,
#: BERT's ``classifier``): no model of ours has them; :func:`load_groupbert_dir` returns them unconverted.
OTHER_HEAD_PREFIXES = ("classifier.",)


# ----------------------------------------------------------------------------------------------
# Config

# (their config.json key, our ModelConfig field, their default when the key is absent: transformers
# BertConfig / GroupBertConfig l.91)
_CONFIG_KEYS = (
    ("vocab_size", "vocab_size", 30522),
    ("hidden_size", "hidden_size", 768),
    ("num_hidden_layers", "num_layers", 12),
    ("num_attention_heads", "num_heads", 12),
    ("intermediate_size", "intermediate_size", 3072),
    ("max_position_embeddings", "max_positions", 512),
    ("type_vocab_size", "type_vocab_size", 2),
    ("hidden_dropout_prob", "hidden_dropout", 0.1),
    ("attention_probs_dropout_prob", "attention_dropout", 0.1),
    ("layer_norm_eps", "layer_norm_eps", 1e-12),
    ("initializer_range", "initializer_range", 0.02),
    ("conv_kernel_size", "conv_kernel_size", 7),
    ("conv_group_size", "conv_group_size", 16),
    ("ffn_groups", "ffn_groups", 4),
)
_INT_KEYS = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "conv_kernel_size", "conv_group_size", "ffn_groups"}
_PROB_KEYS = {"hidden_dropout_prob", "attention_probs_dropout_prob"}
# Keys whose value changes the function: the only value we represent (their default first).
_FIXED_KEYS = (
    ("hidden_act", "gelu", "exact (erf) GELU is the only activation of our GroupBERT"),
    ("position_embedding_type", "absolute", "our GroupBERT has learned absolute positions only"),
    ("is_decoder", False, "our GroupBERT is a bidirectional encoder"),
    ("add_cross_attention", False, "our GroupBERT has no cross-attention"),
    ("tie_word_embeddings", True, "our MLM decoder is tied to the word embeddings"),
)


def model_config_from_optimum(config: dict, source: Optional[str] = None) -> ModelConfig:
    """Their ``config.json`` (a dict) -> our ``ModelConfig(type="groupbert")``, or :class:`InteropError`."""
    if not isinstance(config, dict):
        raise InteropError(f"expected a JSON object, got {type(config).__name__}", source=source)
    if config.get("model_type") != MODEL_TYPE:
        raise InteropError(f"{config.get('model_type')!r} is not optimum-graphcore's GroupBERT "
                           f"(model_type {MODEL_TYPE!r})", key="model_type", source=source)
    for key, wanted, why in _FIXED_KEYS:
        value = config.get(key, wanted)
        if value != wanted or type(value) is not type(wanted):
            raise InteropError(f"{value!r} cannot be represented ({why}; only {wanted!r})", key=key, source=source)
    if config.get("pruned_heads"):
        raise InteropError(f"{config['pruned_heads']!r} cannot be represented (our attention has no pruned heads)",
                           key="pruned_heads", source=source)
    kwargs = {}
    for theirs, ours, default in _CONFIG_KEYS:
        value = config.get(theirs, default)
        if theirs in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InteropError(f"{value!r} must be a positive integer", key=theirs, source=source)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InteropError(f"{value!r} must be a finite number", key=theirs, source=source)
            value = float(value)
            if theirs in _PROB_KEYS and not 0.0 <= value < 1.0:
                raise InteropError(f"{value!r} must be in [0, 1)", key=theirs, source=source)
            if theirs not in _PROB_KEYS and value <= 0.0:
                raise InteropError(f"{value!r} must be > 0", key=theirs, source=source)
        kwargs[ours] = value
    H, I = kwargs["hidden_size"], kwargs["intermediate_size"]
    rules = (
        (H % kwargs["num_heads"] == 0, "num_attention_heads", kwargs["num_heads"],
         f"must divide hidden_size ({H})"),
        (H % kwargs["conv_group_size"] == 0, "conv_group_size", kwargs["conv_group_size"],
         f"must divide hidden_size ({H}) (their groups = int(hidden_size / conv_group_size))"),
        (kwargs["conv_kernel_size"] % 2 == 1, "conv_kernel_size", kwargs["conv_kernel_size"],
         "must be odd (their padding (K-1)//2 keeps the length only for odd K)"),
        (I % kwargs["ffn_groups"] == 0 and H % kwargs["ffn_groups"] == 0, "ffn_groups", kwargs["ffn_groups"],
         f"must divide intermediate_size ({I}) and hidden_size ({H})"),
    )
    for ok, key, value, message in rules:
        if not ok:
            raise InteropError(f"{value!r} {message}", key=key, source=source)
    return ModelConfig(type="groupbert", **kwargs)


def optimum_config(model_config: ModelConfig, architecture: str = PRETRAINING_ARCHITECTURE,
                   torch_dtype: str = "float32") -> dict:
    """Our ``ModelConfig`` -> their ``config.json`` dict (BertConfig keys + the three GroupBERT keys)."""
    if model_config.type != "groupbert":
        raise InteropError(f"{model_config.type!r}: only a GroupBERT exports to optimum-graphcore's GroupBERT",
                           key="model.type")
    config = {"architectures": [architecture], "model_type": MODEL_TYPE}
    for theirs, ours, _ in _CONFIG_KEYS:
        config[theirs] = model_config.eps if ours == "layer_norm_eps" else getattr(model_config, ours)
    config.update(hidden_act="gelu", position_embedding_type="absolute", pad_token_id=0, torch_dtype=torch_dtype)
    return dict(sorted(config.items()))


# ----------------------------------------------------------------------------------------------
# Names and layouts

_GLU, _GROUPED = "glu", "grouped"
_LN_LINEAR = ("weight", "bias")


def _layer_map() -> list[tuple[str, str, Optional[str]]]:
    """(our suffix, their suffix, transform) for one layer; the table in the module docstring."""
    rows = []

    def both(ours, theirs):
        rows.extend((f"{ours}.{p}", f"{theirs}.{p}", None) for p in _LN_LINEAR)

    both("conv_norm", "convolution.prenorm")
    rows += [("conv.glu.weight", "convolution.glu.weight", _GLU), ("conv.glu.bias", "convolution.glu.bias", _GLU)]
    both("conv.grouped_conv", "convolution.groupconv")
    both("conv.norm", "convolution.conv_norm")
    both("conv.output", "convolution.output_projection")
    for n, word in (("1", "first"), ("2", "second")):
        both(f"ffn{n}_norm", f"intermediate_{word}.LayerNorm")
        both(f"ffn{n}.intermediate", f"intermediate_{word}.dense")
        rows += [(f"ffn{n}.output.weight", f"output_{word}.grouped_matmul.weight", _GROUPED),
                 (f"ffn{n}.output.bias", f"output_{word}.grouped_matmul.bias", None)]
        both(f"ffn{n}.mixer", f"output_{word}.dense_output_projection")
    both("attn_norm", "attention.LayerNorm")
    for proj in ("query", "key", "value"):
        both(f"attn.{proj}", f"attention.self.{proj}")
    both("attn.output", "attention.output.dense")
    return rows


_LAYER_MAP = _layer_map()
_OURS_TO_THEIRS = {ours: (theirs, t) for ours, theirs, t in _LAYER_MAP}
_THEIRS_TO_OURS = {theirs: (ours, t) for ours, theirs, t in _LAYER_MAP}
_LAYER_KEY = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")
_OUTER = {"bert.encoder.final_norm.weight": "bert.encoder.LayerNorm.weight",
          "bert.encoder.final_norm.bias": "bert.encoder.LayerNorm.bias"}
_OUTER_BACK = {v: k for k, v in _OUTER.items()}
# Names equal on both sides outside the layers.
_SAME_PREFIXES = ("bert.embeddings.", "bert.pooler.", "cls.", "qa_outputs.")


def _rename(key: str, layer_table: dict, outer: dict) -> Optional[tuple[str, Optional[str]]]:
    """(other side's name, transform) for ``key`` (with the ``bert.`` prefix), or None if unknown."""
    m = _LAYER_KEY.match(key)
    if m:
        hit = layer_table.get(m.group(2))
        return None if hit is None else (f"bert.encoder.layer.{m.group(1)}.{hit[0]}", hit[1])
    if key in outer:
        return outer[key], None
    return (key, None) if key.startswith(_SAME_PREFIXES) else None


def _swap_halves(t: Tensor) -> Tensor:
    """[a | b] -> [b | a] along dim 0: their GLU is [gate | value], ours (``F.glu``) [value | gate]."""
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]], dim=0)


def grouped_to_ours(w: Tensor, groups: int) -> Tensor:
    """Their ``grouped_matmul.weight`` [H, I/G, 1] (Conv1d) -> our ``GroupedLinear.weight`` [G, I/G, H/G]."""
    H, in_per_group, _ = w.shape
    return w[:, :, 0].reshape(groups, H // groups, in_per_group).transpose(1, 2).contiguous()


def grouped_to_theirs(w: Tensor) -> Tensor:
    """Our ``GroupedLinear.weight`` [G, I/G, H/G] -> their Conv1d weight [H, I/G, 1]."""
    G, in_per_group, out_per_group = w.shape
    return w.transpose(1, 2).reshape(G * out_per_group, in_per_group).unsqueeze(-1).contiguous()


# ----------------------------------------------------------------------------------------------
# Export


def export_groupbert(model: nn.Module, model_config: ModelConfig) -> tuple[dict, dict[str, Tensor]]:
    """Our GroupBERT -> (their ``config.json`` dict, state dict in their names and layouts).

    ``model``: :class:`~groupbert.models.groupbert.GroupBertForPreTraining` (-> ``GroupBertForPreTraining``),
    our SQuAD model on a GroupBERT encoder (``groupbert.models.qa``; -> ``GroupBertForQuestionAnswering``,
    with a zero pooler, see the module docstring) or a bare ``GroupBertModel`` (-> ``GroupBertModel``).
    Tensors are detached CPU copies in the model's dtype (none shares storage: safetensors-ready).
    Write them with ``safetensors.torch.save_file(state, dir / "model.safetensors")`` and the dict with
    ``json.dump`` to ``dir / "config.json"``.
    """
    if model_config.type != "groupbert":
        raise InteropError(f"{model_config.type!r}: only a GroupBERT exports to optimum-graphcore's GroupBERT",
                           key="model.type")
    if isinstance(model, GroupBertModel):
        encoder, architecture, prefix = model, BASE_ARCHITECTURE, ""
    elif isinstance(getattr(model, "bert", None), GroupBertModel) and hasattr(model, "qa_outputs"):
        encoder, architecture, prefix = model.bert, QA_ARCHITECTURE, ENCODER_PREFIX
    elif isinstance(getattr(model, "bert", None), GroupBertModel) and hasattr(model, "cls"):
        encoder, architecture, prefix = model.bert, PRETRAINING_ARCHITECTURE, ENCODER_PREFIX
    else:
        raise InteropError(f"{type(model).__name__} is not a GroupBERT pretraining, SQuAD or base model "
                           f"(its encoder is {type(getattr(model, 'bert', model)).__name__})", key="model.type")
    _check_same_architecture(getattr(encoder, "config", None), model_config)

    own = model.state_dict()
    if prefix == "":  # the bare model's keys carry no ``bert.``; map as if they did
        own = {ENCODER_PREFIX + k: v for k, v in own.items()}
    state: dict[str, Tensor] = {}
    for key, value in own.items():
        if key == "cls.predictions.decoder.weight":
            continue  # tied to the word embeddings; transformers does not save the copy either
        hit = _rename(key, _OURS_TO_THEIRS, _OUTER)
        if hit is None:
            raise InteropError(f"no optimum-graphcore name for our parameter {key!r}", key=key)
        theirs, transform = hit
        t = value.detach().cpu()
        if transform == _GLU:
            t = _swap_halves(t)
        elif transform == _GROUPED:
            t = grouped_to_theirs(t)
        state[theirs] = t.clone().contiguous()
    if architecture == QA_ARCHITECTURE and encoder.pooler is None:
        H, ref = model_config.hidden_size, state["bert.embeddings.word_embeddings.weight"]
        state["bert.pooler.dense.weight"] = torch.zeros(H, H, dtype=ref.dtype)
        state["bert.pooler.dense.bias"] = torch.zeros(H, dtype=ref.dtype)
    if prefix == "":
        state = {k[len(ENCODER_PREFIX):]: v for k, v in state.items()}
    dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    return optimum_config(model_config, architecture, dtype), state


def _check_same_architecture(own: Optional[ModelConfig], given: ModelConfig) -> None:
    """The model must be the one ``given`` describes (dropout and init scale aside): the export writes
    ``given`` as the config of those weights."""
    if own is None:
        return
    a, b = asdict(own), asdict(given)
    a["layer_norm_eps"], b["layer_norm_eps"] = own.eps, given.eps
    for k in b:
        if k not in ("hidden_dropout", "attention_dropout", "initializer_range") and a.get(k) != b[k]:
            raise InteropError(f"{b[k]!r} does not match the model's {a.get(k)!r}", key=f"model.{k}")


# ----------------------------------------------------------------------------------------------
# Import

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def load_groupbert_dir(path: Union[str, Path]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """An optimum-graphcore GroupBERT directory -> (our ``ModelConfig``, state dict in our names, float32).

    Reads ``config.json`` and the first of ``model.safetensors``, ``pytorch_model.bin`` (with
    ``torch.load(weights_only=True)``) or their sharded ``*.index.json``. The state dict holds what the
    directory holds: a pretraining checkpoint (``GroupBertForPreTraining``, the Hub's
    ``PipelinedGroupBertForPreTraining``) loads into our ``GroupBertForPreTraining(config)`` with
    ``strict=True`` (``cls.predictions.decoder.weight`` is the word-embedding tensor, as our tie wants). Our
    SQuAD model takes :func:`encoder_state_dict` (``model.bert.load_state_dict(..., strict=True)``: the
    ``bert.`` keys without the pooler) or :func:`qa_state_dict` (also ``qa_outputs`` of a QA checkpoint).
    A ``classifier.*`` head (their other task classes) is returned as is, for the caller to ignore. Anything
    else the conversion cannot represent raises :class:`InteropError` naming the key.
    """
    path = Path(path)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InteropError(f"{path} has no config.json (not a Hugging Face model directory)",
                           source=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"unreadable config.json: {e}", source=str(config_file)) from None
    model_config = model_config_from_optimum(config, str(config_file))
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or any("GroupBert" not in str(a) for a in architectures):
        raise InteropError(f"{architectures!r} are not optimum-graphcore GroupBERT classes",
                           key="architectures", source=str(config_file))
    raw = _read_weights(path)
    state = state_dict_from_optimum(raw, model_config, str(path))
    if model_config.layer_norm_eps != 1e-3:
        logger.warning("%s gives layer_norm_eps=%g, kept (their code uses it as given); optimum-graphcore's "
                       "GroupBERT-base recipe trains with 1e-3", config_file, model_config.layer_norm_eps)
    return model_config, state


def _read_weights(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    def load_one(f: Path) -> dict[str, Tensor]:
        try:
            if f.suffix == ".safetensors":
                return load_file(str(f))
            return torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or truncated file, pickle with objects beyond tensors
            raise InteropError(f"cannot read weights: {type(e).__name__}: {e}", source=str(f)) from None

    for name in _WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            state = load_one(f)
        else:
            try:
                weight_map = json.loads(f.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise InteropError(f"unreadable shard index: {e}", source=str(f)) from None
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(load_one(path / shard))
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise InteropError("not a state dict of tensors", source=str(f))
        return state
    raise InteropError(f"no weights: none of {', '.join(_WEIGHT_FILES)}", source=str(path))


def state_dict_from_optimum(raw: dict[str, Tensor], model_config: ModelConfig,
                            source: Optional[str] = None) -> dict[str, Tensor]:
    """Their state dict -> ours (float32), checked against ``model_config``'s shapes; see
    :func:`load_groupbert_dir`."""
    if raw and not any(k.startswith(ENCODER_PREFIX) for k in raw):  # GroupBertModel: no ``bert.`` prefix
        raw = {(k if k.startswith(("cls.", "qa_outputs.") + OTHER_HEAD_PREFIXES) else ENCODER_PREFIX + k): v
           for k, v in raw.items()}
    raw = dict(raw)
    P = model_config.max_positions
    position_ids = raw.pop("bert.embeddings.position_ids", None)
    if position_ids is not None and not torch.equal(position_ids.reshape(-1).long(), torch.arange(P)):
        raise InteropError("is not arange(max_position_embeddings): our positions are 0..T-1 (or per "
                           "packed sequence)", key="bert.embeddings.position_ids", source=source)
    token_type_ids = raw.pop("bert.embeddings.token_type_ids", None)
    if token_type_ids is not None and token_type_ids.any():
        raise InteropError("is not all zero: our default token types are 0", key="bert.embeddings.token_type_ids",
                           source=source)
    decoder_weight = raw.pop("cls.predictions.decoder.weight", None)
    decoder_bias = raw.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None:
        bias = raw.setdefault("cls.predictions.bias", decoder_bias)
        if not torch.equal(bias, decoder_bias):
            raise InteropError("differs from cls.predictions.bias: our MLM head has one output bias",
                               key="cls.predictions.decoder.bias", source=source)

    state: dict[str, Tensor] = {}
    unknown = []
    for key, value in raw.items():
        if key.startswith(OTHER_HEAD_PREFIXES):  # another task's head: passed on as is, for the caller to ignore
            state[key] = value.float() if value.is_floating_point() else value
            continue
        hit = _rename(key, _THEIRS_TO_OURS, _OUTER_BACK)
        if hit is None:
            unknown.append(key)
            continue
        ours, transform = hit
        t = value.float() if value.is_floating_point() else value
        if transform == _GLU:
            t = _swap_halves(t)
        elif transform == _GROUPED:
            H, G = model_config.hidden_size, model_config.ffn_groups
            expect = (H, model_config.intermediate_size // G, 1)
            if tuple(t.shape) != expect:
                raise InteropError(f"shape {tuple(t.shape)}, expected {expect}", key=key, source=source)
            t = grouped_to_ours(t, G)
        state[ours] = t.contiguous()
    if unknown:
        raise InteropError(f"{len(unknown)} weight(s) with no GroupBERT counterpart here, e.g. "
                           f"{', '.join(sorted(unknown)[:5])}", key=sorted(unknown)[0], source=source)

    expected = _our_shapes(model_config)
    required = [k for k in expected if k.startswith(("bert.embeddings.", "bert.encoder."))]
    missing = [k for k in required if k not in state]
    if missing:
        raise InteropError(f"{len(missing)} encoder weight(s) missing, e.g. {', '.join(missing[:5])} "
                           f"(config.json: {model_config.num_layers} layers)", key=missing[0], source=source)
    if "qa_outputs.weight" in state:
        expected["qa_outputs.weight"], expected["qa_outputs.bias"] = (2, model_config.hidden_size), (2,)
    for key, value in state.items():
        if key.startswith(OTHER_HEAD_PREFIXES):
            continue
        if key not in expected:  # e.g. a layer beyond num_hidden_layers
            raise InteropError(f"not a weight of a {model_config.num_layers}-layer GroupBERT", key=key, source=source)
        if tuple(value.shape) != expected[key]:
            raise InteropError(f"shape {tuple(value.shape)} does not fit config.json (expected {expected[key]})",
                               key=key, source=source)

    if "cls.predictions.transform.dense.weight" in state or decoder_weight is not None:
        embeddings = state["bert.embeddings.word_embeddings.weight"]
        if decoder_weight is not None and not torch.equal(decoder_weight.float(), embeddings):
            raise InteropError("differs from bert.embeddings.word_embeddings.weight: our MLM decoder is tied "
                               "to the word embeddings", key="cls.predictions.decoder.weight", source=source)
        state["cls.predictions.decoder.weight"] = embeddings
    return state


def _our_shapes(model_config: ModelConfig) -> dict[str, tuple]:
    """Our pretraining model's parameter shapes for ``model_config`` (built on the meta device, no memory)."""
    with torch.device("meta"):
        model = GroupBertForPreTraining(model_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def encoder_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The encoder of a converted state dict for our SQuAD model's ``bert`` (which has no pooler):
    the ``bert.`` keys, prefix removed, ``bert.pooler.*`` dropped."""
    return {k[len(ENCODER_PREFIX):]: v for k, v in state_dict.items()
            if k.startswith(ENCODER_PREFIX) and not k.startswith(POOLER_PREFIX)}


def qa_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A converted state dict for our whole SQuAD model: encoder (``bert.``, no pooler) plus ``qa_outputs``
    when the directory was a ``GroupBertForQuestionAnswering`` (else the span head starts fresh:
    ``strict=False`` or load :func:`encoder_state_dict` into ``model.bert``)."""
    return {k: v for k, v in state_dict.items()
            if (k.startswith(ENCODER_PREFIX) and not k.startswith(POOLER_PREFIX)) or k.startswith("qa_outputs.")}


__all__ = [
    "BASE_ARCHITECTURE", "ENCODER_PREFIX", "InteropError", "MODEL_TYPE", "OTHER_HEAD_PREFIXES", "POOLER_PREFIX",
    "PRETRAINING_ARCHITECTURE", "QA_ARCHITECTURE", "encoder_state_dict", "export_groupbert",
    "grouped_to_ours", "grouped_to_theirs", "load_groupbert_dir", "model_config_from_optimum",
    "optimum_config", "qa_state_dict", "state_dict_from_optimum",
]
