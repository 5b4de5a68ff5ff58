"""Our models in Hugging Face ``transformers`` names and layouts, and back.

Export (:func:`to_hf`): our model -> ``config.json`` content + a state dict in the layout HF's own
``save_pretrained`` writes. Import (:func:`read_pretrained_dir`, :func:`load_pretrained`): a HF directory, or
a model id in the local HF cache (:func:`resolve_model_id`, never downloaded), -> our model, taking the
parts that fit it.

Layout facts (transformers 4.x and 5.x; checked against 5.18's ``save_pretrained``):

- ``BertForPreTraining``: ``bert.*`` (embeddings, encoder, pooler), ``cls.predictions.transform.*``,
  ``cls.predictions.bias`` and ``cls.seq_relationship``. Its ``_tied_weights_keys`` tie
  ``cls.predictions.decoder.weight`` to ``bert.embeddings.word_embeddings.weight`` and
  ``cls.predictions.decoder.bias`` to ``cls.predictions.bias``, so saved files leave both out and loading
  ties them again. ``BertForMaskedLM`` is the same model without pooler (``add_pooling_layer=False``) and
  NSP head: it loads a ``BertForPreTraining`` file and ignores those keys.
- ``BertForQuestionAnswering``: ``bert.*`` without a pooler, and ``qa_outputs`` = Linear(H, 2) giving the
  start and end logits. ``BertModel`` files carry no ``bert.`` prefix.
- ``GPT2LMHeadModel``: ``transformer.*`` with the projections stored as ``Conv1D`` weights [in, out] (ours
  are ``nn.Linear`` [out, in]: ``groupbert.models.gpt2.TRANSPOSED``); ``lm_head.weight`` is tied to
  ``transformer.wte.weight`` and left out.

Our BERT and GPT-2 already use these names (``groupbert/models/bert.py``, ``gpt2.py``), so the conversion is
the tied keys, the transposes and the config. GroupBERT has no ``transformers`` class: it goes through
optimum-graphcore's layout (``groupbert.interop.optimum_groupbert``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from groupbert.config import ModelConfig
from groupbert.interop import optimum_groupbert
from groupbert.interop.errors import InteropError
from groupbert.models import bert as bert_io
from groupbert.models import gpt2 as gpt2_io
from groupbert.models.bert import BertForPreTraining
from groupbert.models.gpt2 import GPT2LMHeadModel
from groupbert.models.qa import BertForQuestionAnswering

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------

@dataclass
class Exported:
    """What a ``save_pretrained`` directory holds besides the tokenizer."""
    architecture: str
    config: dict                          # config.json
    state_dict: dict[str, Tensor]         # model.safetensors, tied weights stored once
    generation_config: Optional[dict] = None  # generation_config.json (causal LMs)


def _plain(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors (what ``safetensors.torch.save_file`` takes)."""
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def _bert_config(cfg: ModelConfig, architecture: str, pad_id: int) -> dict:
    hf = bert_io.to_hf_config(cfg)
    hf.architectures = [architecture]
    hf.pad_token_id = pad_id
    return hf.to_diff_dict()   # what PretrainedConfig.save_pretrained writes


def export_bert_pretraining(model: BertForPreTraining, pad_id: int) -> Exported:
    """Our MLM + NSP BERT -> ``BertForPreTraining`` (loads with AutoModelForPreTraining and AutoModelForMaskedLM)."""
    sd = {k: v for k, v in model.state_dict().items() if k != "cls.predictions.decoder.weight"}  # tied
    return Exported("BertForPreTraining", _bert_config(model.config, "BertForPreTraining", pad_id), _plain(sd))


def export_bert_qa(model: BertForQuestionAnswering, pad_id: int) -> Exported:
    """Our span model on a BERT encoder -> ``BertForQuestionAnswering`` (same keys: no pooler, ``qa_outputs``)."""
    if model.config.type != "bert":
        raise InteropError(f"BertForQuestionAnswering needs a BERT encoder, not model.type {model.config.type!r}")
    return Exported("BertForQuestionAnswering", _bert_config(model.config, "BertForQuestionAnswering", pad_id),
                    _plain(model.state_dict()))


def export_gpt2(model: GPT2LMHeadModel, eos_id: int) -> Exported:
    """Our GPT-2 -> ``GPT2LMHeadModel``: Conv1D transposes, ``lm_head`` left to HF's tie; bos = eos =
    ``eos_id`` (GPT-2's ``<|endoftext|>``, 50256 in OpenAI's vocabulary, 0 in one trained by ``train_bpe``)."""
    hf = gpt2_io.to_hf_config(model.config)
    hf.architectures = ["GPT2LMHeadModel"]
    hf.bos_token_id = hf.eos_token_id = eos_id
    sd = {k: v for k, v in gpt2_io.to_hf_state_dict(model).items() if k != "lm_head.weight"}
    # HF's GenerationConfig: no pad token in GPT-2, so generate() pads with eos (what HF suggests doing)
    generation = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
                  "transformers_version": hf.to_diff_dict().get("transformers_version")}
    return Exported("GPT2LMHeadModel", hf.to_diff_dict(), _plain(sd), generation)


def to_hf(model: nn.Module, pad_id: Optional[int] = None, eos_id: Optional[int] = None) -> Exported:
    """Our pretraining or SQuAD model -> its HF (or, for GroupBERT, optimum-graphcore) form; ``pad_id`` for
    BERT, ``eos_id`` for GPT-2 come from the run's tokenizer."""
    cfg: ModelConfig = model.config
    if cfg.type == "groupbert":
        config_json, sd = optimum_groupbert.export_groupbert(model, cfg)
        arch = (config_json.get("architectures") or ["GroupBert"])[0]
        return Exported(arch, dict(config_json), _plain(sd))
    if isinstance(model, GPT2LMHeadModel):
        return export_gpt2(model, eos_id if eos_id is not None else cfg.vocab_size - 1)
    if isinstance(model, BertForQuestionAnswering):
        return export_bert_qa(model, pad_id or 0)
    if isinstance(model, BertForPreTraining):
        return export_bert_pretraining(model, pad_id or 0)
    raise InteropError(f"no Hugging Face export for {type(model).__name__} (model.type {cfg.type!r})")


# --------------------------------------------------------------------------------------------------
# Finding a directory: a path, or a model id in the local cache
# --------------------------------------------------------------------------------------------------

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_like_model_id(name: str) -> bool:
    """``bert-base-uncased`` or ``org/name`` (Hub repo ids), not ``./x``, ``/abs``, ``a/b/c`` or ``x/``."""
    return bool(_MODEL_ID.match(name)) and ".." not in name


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps downloaded models: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (read now, not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def resolve_model_id(model_id: str) -> Path:
    """The snapshot directory of ``model_id`` in the local HF cache; never downloads (``local_files_only``)."""
    cache = hub_cache_dir()
    advice = (f"the model id {model_id!r} is not in the local Hugging Face cache (HF_HUB_CACHE={cache}); this "
              f"program never downloads: fetch it on a machine with network (`hf download {model_id}`, or "
              f"`huggingface-cli download {model_id}`) and copy that cache here, or give a local directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise InteropError(advice + " (huggingface_hub is not installed)") from None
    try:
        return Path(snapshot_download(model_id, cache_dir=str(cache), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError, HFValidationError, OSError...: all "not here"
        logger.debug("snapshot_download(%s, local_files_only=True): %s", model_id, e)
        raise InteropError(advice) from None


def is_pretrained_dir(path: Path) -> bool:
    """A ``save_pretrained``-style directory (a ``config.json``), not one of our runs or checkpoints."""
    return (Path(path) / "config.json").is_file() and not (Path(path) / "state.json").exists()


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------

@dataclass
class PretrainedDir:
    path: Path
    family: str                    # "bert" | "gpt2" | "groupbert"
    architecture: Optional[str]    # config.json's architectures[0], when given
    model_config: ModelConfig
    state_dict: dict[str, Tensor] = field(repr=False)  # HF names (bert, gpt2) or ours (groupbert)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InteropError(f"{path} is missing: not a Hugging Face model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"{path} is unreadable or not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return data


def read_weights(path: Path) -> dict[str, Tensor]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` lists; pickled weights
    (``pytorch_model.bin``) are refused: loading them would run code from the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InteropError(f"{index} has no weight_map")
        files = [path / f for f in sorted(set(weight_map.values()))]
    else:
        pickled = [p.name for p in path.glob("*.bin")]
        raise InteropError(f"{path} has no model.safetensors" + (
            f" (only {', '.join(pickled)}: pickled weights are never loaded; convert them with "
            f"transformers' save_pretrained(..., safe_serialization=True) first)" if pickled else ""))
    sd: dict[str, Tensor] = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise InteropError(f"cannot read {f}: {e}") from None
    return sd


def read_pretrained_dir(path: str | Path) -> PretrainedDir:
    """Read a HF BERT / GPT-2 directory, or a GroupBERT one in optimum-graphcore's layout."""
    path = Path(path)
    config_file = path / "config.json"
    hf = _read_json(config_file)
    archs = hf.get("architectures") or []
    arch = archs[0] if archs and isinstance(archs[0], str) else None
    model_type = hf.get("model_type")
    if model_type == "groupbert" or (arch or "").startswith("GroupBert"):
        cfg, sd = optimum_groupbert.load_groupbert_dir(path)
        return PretrainedDir(path, "groupbert", arch, cfg, sd)
    converters = {"bert": bert_io.from_hf_config, "gpt2": gpt2_io.from_hf_config}
    if model_type not in converters:
        raise InteropError(f"{config_file}: model_type {model_type!r} is not supported (bert, gpt2, or GroupBERT in "
                           f"optimum-graphcore's layout)")
    try:
        cfg = converters[model_type](hf)
    except (ValueError, TypeError) as e:
        raise InteropError(f"{config_file}: {e}") from None
    return PretrainedDir(path, model_type, arch, cfg, read_weights(path))


# Parts of our BERT-family models that a directory may lack (they then keep their fresh initialisation),
# and the part that must always be there.
ENCODER = ("bert.embeddings.", "bert.encoder.")
OPTIONAL_PARTS = {"pooler": ("bert.pooler.",), "MLM head": ("cls.predictions.transform.", "cls.predictions.bias"),
                  "NSP head": ("cls.seq_relationship.",), "span head": ("qa_outputs.",)}
TIED = ("cls.predictions.decoder.weight",)


def bert_names(sd: dict[str, Tensor], where) -> dict[str, Tensor]:
    """A HF BERT state dict (any of the layouts above, or an old TF-converted one) in our names."""
    out, decoder_weight, decoder_bias = {}, None, None
    for key, value in sd.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):   # buffers, not weights
            continue
        if key == "cls.predictions.decoder.weight":
            decoder_weight = value
            continue
        if key == "cls.predictions.decoder.bias":
            decoder_bias = value
            continue
        if key.startswith(("embeddings.", "encoder.", "pooler.")):   # BertModel files: no prefix
            key = "bert." + key
        out[key] = value
    if decoder_bias is not None:
        out.setdefault("cls.predictions.bias", decoder_bias)
    embedding = out.get("bert.embeddings.word_embeddings.weight")
    if decoder_weight is not None and embedding is not None and (
            decoder_weight.shape != embedding.shape or not torch.equal(decoder_weight, embedding)):
        raise InteropError(f"{where}: cls.predictions.decoder.weight differs from the word embeddings; our BERT "
                           "ties them (tie_word_embeddings=False is not supported)")
    return out


def load_parts(model: nn.Module, sd: dict[str, Tensor], where) -> tuple[list[str], list[str]]:
    """Load a state dict in our names into our BERT/GroupBERT pretraining or span model: the encoder must
    be there whole; the pooler and heads are taken when present and left fresh when absent; parts this
    model does not have (another task's heads) are ignored. Returns (parts loaded, parts left fresh)."""
    own = {k: v for k, v in model.state_dict().items() if k not in TIED}
    used = {k: v for k, v in sd.items() if k in own}
    extra = sorted(k for k in sd if k not in own and k not in TIED)
    bad_extra = [k for k in extra if k.startswith(ENCODER)]
    missing = sorted(own.keys() - used.keys())
    shapes = [f"{k} {tuple(used[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(used)
              if used[k].shape != own[k].shape]
    loaded, fresh = ["encoder"], []
    for part, prefixes in OPTIONAL_PARTS.items():
        mine = [k for k in own if k.startswith(prefixes)]
        if not mine:
            continue
        absent = [k for k in mine if k in missing]
        if absent and len(absent) < len(mine):
            raise InteropError(f"{where}: the {part} is incomplete (missing {absent[:5]})")
        (fresh if absent else loaded).append(part)
        missing = [k for k in missing if k not in absent]
    if missing or bad_extra or shapes:
        problems = [f"{name} {keys[:5]}{'...' if len(keys) > 5 else ''}" for name, keys in
                    (("missing", missing), ("unexpected", bad_extra), ("shape mismatch", shapes)) if keys]
        raise InteropError(f"{where}: weights do not fit {type(model).__name__}: " + "; ".join(problems))
    ignored = [k for k in extra if k not in bad_extra]
    if ignored:
        logger.info("%s: not used by %s: %s%s", where, type(model).__name__, ", ".join(ignored[:4]),
                    "..." if len(ignored) > 4 else "")
    model.load_state_dict(used, strict=False)
    return loaded, fresh


def load_pretrained(model: nn.Module, pre: PretrainedDir) -> tuple[list[str], list[str]]:
    """Load what fits ``model`` from ``pre`` (the caller has checked the architecture); returns
    (parts loaded, parts left fresh)."""
    if pre.family == "gpt2":
        if not isinstance(model, GPT2LMHeadModel):
            raise InteropError(f"{pre.path} is a GPT-2; {type(model).__name__} cannot start from it")
        try:
            gpt2_io.load_hf_state_dict(model, pre.state_dict, strict=True)
        except ValueError as e:
            raise InteropError(f"{pre.path}: {e}") from None
        return ["transformer", "lm_head (tied to wte)"], []
    if isinstance(model, GPT2LMHeadModel):
        raise InteropError(f"{pre.path} is a {pre.family} model; a GPT-2 cannot start from it")
    sd = bert_names(pre.state_dict, pre.path) if pre.family == "bert" else pre.state_dict
    return load_parts(model, sd, pre.path)
