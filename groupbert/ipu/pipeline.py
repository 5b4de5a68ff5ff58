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
    """Annotate ``model`` (``BertForPreTraining`` / ``GroupBertForPreTraining`` / ``GPT2LMHeadModel``) in
    place; returns it."""
    if hasattr(model, "transformer"):
        return _parallelize_gpt2(model, layers_per_ipu, recompute)
    layers = model.bert.encoder.layer
    layers_per_ipu = list(layers_per_ipu or [len(layers)])
    if sum(layers_per_ipu) != len(layers):
        raise ValueError(f"ipu.layers_per_ipu {layers_per_ipu} places {sum(layers_per_ipu)} layers but the "
                         f"model has {len(layers)}")
    hooks = []
    poptorch.BeginBlock(model.bert.embeddings, "Embedding", ipu_id=0)
    logger.info("Embedding  --> IPU 0")
    for i, (layer, ipu) in enumerate(zip(layers, layer_ipus(layers_per_ipu))):
        poptorch.BeginBlock(layer, f"Encoder{i}", ipu_id=ipu)
        if recompute:
            hooks.append(layer.register_forward_hook(_recompute_hook))
        logger.info("Encoder %-3d --> IPU %d", i, ipu)
    if getattr(model.bert, "pooler", None) is not None:
        poptorch.BeginBlock(model.bert.pooler, "Heads", ipu_id=0)
        logger.info("Pooler, MLM and NSP heads --> IPU 0")
    elif hasattr(model, "qa_outputs"):  # the SQuAD span head stays with the last layer: no extra stage
        logger.info("QA span head --> IPU %d", len(layers_per_ipu) - 1)
    model._ipu_recompute_hooks = hooks
    return model


def _parallelize_gpt2(model: nn.Module, layers_per_ipu: list[int] | None, recompute: bool) -> nn.Module:
    """GPT-2 as Graphcore's GPT-2 app: token/position embeddings on IPU 0, blocks split by
    ``layers_per_ipu``, final LayerNorm and the tied LM head back on IPU 0."""
    blocks = model.transformer.h
    layers_per_ipu = list(layers_per_ipu or [len(blocks)])
    if sum(layers_per_ipu) != len(blocks):
        raise ValueError(f"ipu.layers_per_ipu {layers_per_ipu} places {sum(layers_per_ipu)} layers but the "
                         f"model has {len(blocks)}")
    hooks = []
    poptorch.BeginBlock(model.transformer.wte, "Embedding", ipu_id=0)
    logger.info("Embedding  --> IPU 0")
    for i, (block, ipu) in enumerate(zip(blocks, layer_ipus(layers_per_ipu))):
        poptorch.BeginBlock(block, f"Layer{i}", ipu_id=ipu)
        if recompute:
            hooks.append(block.register_forward_hook(_recompute_hook))
        logger.info("Layer %-3d --> IPU %d", i, ipu)
    poptorch.BeginBlock(model.transformer.ln_f, "LMHead", ipu_id=0)
    logger.info("ln_f and tied LM head --> IPU 0")
    model._ipu_recompute_hooks = hooks
    return model


def deparallelize(model: nn.Module) -> nn.Module:
    """Remove every block and recomputation hook, giving back the plain CPU model."""
    poptorch.removeBlocks(model)
    for h in getattr(model, "_ipu_recompute_hooks", []):
        h.remove()
    model._ipu_recompute_hooks = []
    return model


def _recompute_hook(module, inputs, output):
    return poptorch.recomputationCheckpoint(output)
