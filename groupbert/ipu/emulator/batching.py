"""PopTorch's batching semantics: how one host call's inputs are cut into micro-batches and how the
micro-batches' outputs are returned.

Inputs (graphcore/poptorch:python/_poplar_executor.py ``_narrow_tensor``): every input tensor's first
dimension must be ``micro x deviceIterations x (replicationFactor / input_group_size) x
gradientAccumulation``; 0-d tensors and non-tensors pass through unchanged. The samples are ordered as
PopART's ``[batches_per_step, accl_factor, repl_factor, micro_batch, ...]``
(graphcore/popart:docs/popart/glossary.rst): consecutive ``micro`` rows go to replica (group) 0, 1, ...,
then to the next accumulation step, then to the next device iteration.

Outputs (graphcore/poptorch:popart_compiler/source/Compiler.cpp ``popartBatchDimForAnchor``): with
``N = replicas x deviceIterations x GA`` returned batches ``b`` are ``N`` for ``All``, ``N / period`` for
``EveryN``, and ``replicas`` for ``Final`` and ``Sum``. If ``b > 1`` a 0-d output becomes ``[b]`` and
other outputs are concatenated along dim 0; if ``b == 1`` the micro-batch's shape is kept.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree

from . import enums
from .errors import AssertError, Error

__all__ = ["MicroBatches", "collect_outputs", "replica_data_group"]


def _batch_error(shape, b_size, di, r, g, ga, product) -> AssertError:
    return AssertError(
        f"Invalid batch dimension: In the input {shape}, the batch dimension ({b_size}) must be a "
        f"multiple of Options.deviceIterations({di}) * (Options.replicationFactor({r}) / "
        f"Options.inputReplicaGrouping.input_group_size({g})) * "
        f"Options.Training.gradientAccumulation({ga}) = {product} because it is used to calculate the "
        "batch size which will be executed on the device in any given iteration. For a full "
        "explanation see the batching semantics page of the documentation.")


def replica_data_group(replica: int, replicas: int, group_size: int, cgt: enums.CommGroupType) -> int:
    """Index of the input slice replica ``replica`` reads (replicas of one input group share one)."""
    groups = replicas // group_size
    if cgt == enums.CommGroupType.Orthogonal:
        return replica % groups
    return replica // group_size


class MicroBatches:
    """The inputs of one host call, addressable as micro-batch ``(device iteration, GA step, group)``."""

    def __init__(self, args: Sequence[Any], kwargs: dict, device_iterations: int, gradient_accumulation: int,
                 replicas: int, input_group_size: int) -> None:
        if replicas % input_group_size != 0:
            raise Error(f"replicationFactor({replicas}) must be a multiple of "
                        f"inputReplicaGrouping.input_group_size({input_group_size})")
        self.di, self.ga = device_iterations, gradient_accumulation
        self.groups = replicas // input_group_size
        product = self.di * self.groups * self.ga
        leaves, self._spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        self._leaves: List[Any] = []
        self._split: List[bool] = []
        signature = []
        for leaf in leaves:
            split = False
            if isinstance(leaf, torch.Tensor):
                if leaf.requires_grad:
                    leaf = leaf.detach()  # PopTorch: "Input tensor has requires_grad=True set..."
                signature.append((tuple(leaf.shape), leaf.dtype))
                if leaf.dim() > 0:
                    if leaf.shape[0] % product != 0:
                        raise _batch_error(leaf.shape, leaf.shape[0], self.di, replicas, input_group_size,
                                           self.ga, product)
                    leaf = leaf.reshape(self.di, self.ga, self.groups, leaf.shape[0] // product,
                                        *leaf.shape[1:])
                    split = True
            else:
                signature.append(type(leaf).__name__)
            self._leaves.append(leaf)
            self._split.append(split)
        self.signature: Tuple = tuple(signature)

    def get(self, d: int, a: int, group: int) -> Tuple[tuple, dict]:
        """(args, kwargs) of one micro-batch."""
        leaves = [leaf[d, a, group] if split else leaf for leaf, split in zip(self._leaves, self._split)]
        args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        return args, kwargs


def collect_outputs(per_batch: List[Tuple[List[Any], Any]], mode: enums.OutputMode, period: int,
                    device_iterations: int, gradient_accumulation: int, replicas: int) -> Any:
    """Combine the outputs of the ``N = DI x GA x R`` micro-batch runs (ordered ``[DI][GA][R]``).

    ``per_batch`` holds, per run, the flattened output leaves (tensors already detached) and the
    pytree spec to rebuild the structure.
    """
    di, ga, r = device_iterations, gradient_accumulation, replicas
    n = di * ga * r
    if len(per_batch) != n:
        raise Error(f"internal: expected {n} micro-batch outputs, got {len(per_batch)}")
    steps = di * ga
    if mode == enums.OutputMode.All:
        selection = [[i] for i in range(n)]
    elif mode == enums.OutputMode.Final:
        selection = [[(steps - 1) * r + rep] for rep in range(r)]
    elif mode == enums.OutputMode.Sum:
        selection = [[k * r + rep for k in range(steps)] for rep in range(r)]
    elif mode == enums.OutputMode.EveryN:
        if steps % period != 0:
            raise AssertError(f"Output return period ({period}) must be a factor of "
                              f"deviceIterations x gradientAccumulation ({steps})")
        selection = [[k * r + rep] for k in range(steps) if (k + 1) % period == 0 for rep in range(r)]
    else:
        raise Error(f"Output mode {mode!r} must be resolved before execution")

    spec = per_batch[-1][1]
    num_leaves = len(per_batch[-1][0])
    out_leaves = []
    for j in range(num_leaves):
        last = per_batch[-1][0][j]
        if not isinstance(last, torch.Tensor):
            out_leaves.append(last)
            continue
        items = []
        for group in selection:
            if len(group) == 1:
                items.append(per_batch[group[0]][0][j])
            else:
                items.append(torch.stack([per_batch[i][0][j] for i in group]).sum(dim=0))
        if len(items) == 1:
            out_leaves.append(items[0])
        elif items[0].dim() == 0:
            out_leaves.append(torch.stack(items))
        else:
            out_leaves.append(torch.cat(items, dim=0))
    return pytree.tree_unflatten(out_leaves, spec)
