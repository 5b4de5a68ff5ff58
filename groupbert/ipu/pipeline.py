"""Pipelining GroupBERT / BERT (and GPT-2) over IPUs: ``parallelize`` and ``deparallelize``.

Placement as Graphcore's BERT app (graphcore/examples nlp/bert/pytorch ``modeling.py``): the embeddings
on IPU 0; encoder layers split by ``layers_per_ipu`` (``[0, 4, 4, 4]`` leaves IPU 0 to the embeddings and
heads); pooler, tied MLM head and NSP back on IPU 0, which is why the options use
``AutoStage.AutoIncrement``; a SQuAD span head (no pooler) stays on the last layer's IPU. A recomputation checkpoint after every layer keeps only layer inputs
stashed. Numerics are unchanged: blocks only say where things run.
"""
from __future__ import annotations

import logging

import torch.nn as nn

from groupbert.ipu import poptorch

logger = logging.getLogger(__name__)


def layer_ipus(layers_per_ipu: list[int]) -> list[int]:
    """IPU of every encoder layer: ``[1, 3]`` -> ``[0, 1, 1, 1]``."""
    return [ipu for ipu, n in enumerate(layers_per_ipu) for _ in range(n)]


def parallelize(model: nn.Module, layers_per_ipu: list[int] | None, recompute: bool = True) -> nn.Module:
    """Annotate ``model`` (``BertForPreTraining`` / ``GroupBertForPreTraining`` / ``BertForQuestionAnswering``
    / ``GPT2LMHeadModel``) in place; returns it."""
    if hasattr(model, "transformer"):  # GPT-2, as Graphcore's GPT-2 app: ln_f and the tied LM head on IPU 0
        head, head_name = model.transformer.ln_f, "ln_f and tied LM head"
        return _place(model, model.transformer.wte, model.transformer.h, head, head_name, layers_per_ipu, recompute)
    if getattr(model.bert, "pooler", None) is not None:  # pretraining: pooler, MLM and NSP back on IPU 0
        head, head_name = model.bert.pooler, "pooler, MLM and NSP heads"
    else:  # the SQuAD span head (no pooler) stays with the last layer: no extra stage
        head, head_name = None, "QA span head"
    return _place(model, model.bert.embeddings, model.bert.encoder.layer, head, head_name, layers_per_ipu, recompute)


def _place(model: nn.Module, embeddings: nn.Module, layers: nn.ModuleList, head: nn.Module | None, head_name: str,
           layers_per_ipu: list[int] | None, recompute: bool) -> nn.Module:
    layers_per_ipu = list(layers_per_ipu or [len(layers)])
    if sum(layers_per_ipu) != len(layers):
        raise ValueError(f"ipu.layers_per_ipu {layers_per_ipu} places {sum(layers_per_ipu)} layers but the "
                         f"model has {len(layers)}")
    hooks = []
    poptorch.BeginBlock(embeddings, "Embedding", ipu_id=0)
    logger.info("Embedding  --> IPU 0")
    for i, (layer, ipu) in enumerate(zip(layers, layer_ipus(layers_per_ipu))):
        poptorch.BeginBlock(layer, f"Layer{i}", ipu_id=ipu)
        if recompute:
            hooks.append(layer.register_forward_hook(_recompute_hook))
        logger.info("Layer %-3d --> IPU %d", i, ipu)
    if head is not None:
        poptorch.BeginBlock(head, "Heads", ipu_id=0)
    logger.info("%s --> IPU %d", head_name, 0 if head is not None else len(layers_per_ipu) - 1)
    model._ipu_recompute_hooks = hooks
    _host_paths(model, False)  # PopTorch lowers nn.Conv1d(groups=...) and nn.Linear natively
    return model


def deparallelize(model: nn.Module) -> nn.Module:
    """Remove every block and recomputation hook, giving back the plain CPU model."""
    poptorch.removeBlocks(model)
    for h in getattr(model, "_ipu_recompute_hooks", []):
        h.remove()
    model._ipu_recompute_hooks = []
    _host_paths(model, True)
    return model


def _host_paths(model: nn.Module, enabled: bool) -> None:
    """Switch the host-only fast paths: the C++ conv (``use_custom_op``, a CPU kernel) and GPT-2's padded
    vocabulary GEMM (``pad_vocab``, a CPU layout trick); on the IPU the plain modules are lowered."""
    for m in model.modules():
        for flag in ("use_custom_op", "pad_vocab"):
            if hasattr(m, flag):
                setattr(m, flag, enabled)


def _recompute_hook(module, inputs, output):
    return poptorch.recomputationCheckpoint(output)
