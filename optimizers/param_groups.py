"""Parameter groups by rule: matrices, embeddings and vectors (biases, norm gains, other 1-D tensors).

| group      | tensors                                   | weight decay | LAMB trust ratio | LionAR rotational |
|------------|-------------------------------------------|--------------|------------------|-------------------|
| matrices   | every >= 2-D weight but embeddings        | yes          | yes              | yes               |
| embeddings | ``nn.Embedding`` weights (and tied heads) | configurable | yes              | configurable      |
| vectors    | biases, LayerNorm gains, other 1-D        | no           | no               | no                |

Excluding biases and norms from decay and from the trust ratio follows NVIDIA's BERT recipe
(``no_decay = ['bias', 'gamma', 'beta', 'LayerNorm']`` with apex FusedLAMB skipping the ratio for
wd = 0 groups) and Graphcore's GroupBERT LAMB (``exclude_from_layer_adaptation = bias, beta, gamma``);
the dimension rule is nanoGPT's ``p.dim() >= 2``. Group keys the optimizers read: ``weight_decay``,
``trust_ratio`` (LAMB), ``rotational`` (LionAR); ``group`` names the rule for logs.
"""
from __future__ import annotations

import torch.nn as nn

NO_DECAY = ("bias", "LayerNorm.weight", "norm.weight")


def param_groups(model: nn.Module, weight_decay: float, *, no_decay: tuple[str, ...] = NO_DECAY,
                 decay_embeddings: bool = True, rotational_embeddings: bool = True,
                 trust_ratio_vectors: bool = False) -> list[dict]:
    """Split ``model``'s trainable parameters into the groups above (tied tensors appear once).

    Args:
        weight_decay: decay of the matrix group (and of embeddings if ``decay_embeddings``).
        no_decay: name suffixes always treated as vectors (in addition to every tensor with dim < 2).
        decay_embeddings: embeddings decay like matrices (nanoGPT, REQ) or not.
        rotational_embeddings: LionAR treats embedding rows as rotational (REQ's default) or not.
        trust_ratio_vectors: give biases and gains a LAMB trust ratio too (torch-optimizer's LAMB).
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    buckets: dict[str, list] = {"matrices": [], "embeddings": [], "vectors": []}
    names: dict[str, list[str]] = {k: [] for k in buckets}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or any(name.endswith(s) for s in no_decay):
            key = "vectors"
        elif id(p) in embedding_ids:
            key = "embeddings"
        else:
            key = "matrices"
        buckets[key].append(p)
        names[key].append(name)
    settings = {
        "matrices": {"weight_decay": weight_decay, "trust_ratio": True, "rotational": True},
        "embeddings": {"weight_decay": weight_decay if decay_embeddings else 0.0, "trust_ratio": True,
                       "rotational": rotational_embeddings},
        "vectors": {"weight_decay": 0.0, "trust_ratio": trust_ratio_vectors, "rotational": False},
    }
    return [{"params": buckets[k], "param_names": names[k], "group": k, **settings[k]}
            for k in buckets if buckets[k]]
