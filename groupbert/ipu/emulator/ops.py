"""PopTorch's model-side ops (graphcore/poptorch:python/ops.py, python/_impl.py, python/__init__.py).

On the IPU these are graph annotations; numerically they are identities (``recomputationCheckpoint``,
``set_available_memory``, ``nop``, ``ipu_print_tensor``), a matmul (``serializedMatMul``) or a
reduction (``identity_loss``), which is what the emulator computes.

``custom_op`` runs a PopART custom op. PopTorch finds the op in a shared library loaded with
``ctypes.cdll.LoadLibrary``; the emulator finds a torch implementation registered with
:func:`register_custom_op` (the application registers its C++ ops' torch twins there). Autograd runs
through the registered function, as the op's PopART grad op does on the IPU.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from . import enums
from ._runtime import RUNTIME
from .errors import AssertError, Error

__all__ = ["identity_loss", "recomputationCheckpoint", "serializedMatMul", "set_available_memory", "nop",
           "ipu_print_tensor", "isRunningOnIpu", "ipuHardwareIsAvailable", "ipuHardwareVersion",
           "custom_op", "register_custom_op", "unregister_custom_op", "registered_custom_ops", "for_loop",
           "Attribute", "NameScope", "setLogLevel"]

logger = logging.getLogger(__name__)

_REDUCTIONS = ("sum", "mean", "none")


def identity_loss(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mark ``x`` (reduced by ``"sum"``, ``"mean"`` or ``"none"``) as the model's loss.

    Returns the reduced tensor. In a ``trainingModel`` the final identity loss (the one no other loss
    depends on) is where backpropagation starts; a ``"none"`` loss with more than one element is
    back-propagated with a gradient of ones (as a sum).
    """
    if reduction not in _REDUCTIONS:
        raise AssertError("Unsupported reduction type!")
    if reduction == "sum":
        out = x.sum()
    elif reduction == "mean":
        out = x.mean()
    else:
        out = x.view_as(x)  # a new autograd node, so the loss can be told apart from its input
    if RUNTIME.losses is not None:
        RUNTIME.losses.append((out, reduction, "identity"))
    return out


def recomputationCheckpoint(*tensors):
    """Keep these values (rather than recompute them) in the backward pass; returns the inputs."""
    if len(tensors) == 1 and isinstance(tensors[0], (tuple, list)):
        return type(tensors[0])(recomputationCheckpoint(*tensors[0]))
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise ValueError("All inputs must be tensors")
    if RUNTIME.on_checkpoint is not None:
        RUNTIME.on_checkpoint(tensors)
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def serializedMatMul(lhs: torch.Tensor, rhs: torch.Tensor, mode: enums.MatMulSerializationMode,
                     factor: int = 0, keep_precision: bool = False) -> torch.Tensor:
    """``lhs @ rhs`` computed as ``factor`` smaller matmuls on the IPU (the same values)."""
    if not isinstance(keep_precision, bool) or not isinstance(factor, int) or \
            not isinstance(mode, enums.MatMulSerializationMode):
        raise AssertError("serializedMatMul expects a MatMulSerializationMode, an int factor and a bool")
    return torch.matmul(lhs, rhs)


def set_available_memory(tensor: torch.Tensor, available_memory_proportion: float) -> torch.Tensor:
    """Temporary-memory proportion for the op producing ``tensor``; returns ``tensor``."""
    if not isinstance(tensor, torch.Tensor):
        raise Error("You may only set available memory for torch.tensor values. "
                    f"{type(tensor)} is not supported.")
    return tensor


def nop(tensor: torch.Tensor) -> torch.Tensor:
    """An identity the graph compiler never removes."""
    if not isinstance(tensor, torch.Tensor):
        raise Error(f"nop must take a torch.tensor argument. {type(tensor)} is not supported.")
    return tensor


def ipu_print_tensor(tensor: torch.Tensor, title: str = "", *args, **kwargs) -> torch.Tensor:
    """Print ``tensor`` when it is computed on the (emulated) IPU; returns ``tensor``."""
    if not isinstance(tensor, torch.Tensor):
        raise Error("ipu print tensor must take a torch.tensor argument. "
                    f"{type(tensor)} is not supported.")
    if RUNTIME.running:
        print(f"{title}: {tensor}" if title else tensor)
    return tensor


def isRunningOnIpu() -> bool:
    """True while a ``trainingModel``/``inferenceModel`` runs the model (False on the CPU)."""
    return RUNTIME.running


def ipuHardwareIsAvailable(num_ipus: int = 1) -> bool:
    """Always False: the emulator never has IPU hardware."""
    return False


def ipuHardwareVersion() -> int:
    raise AssertError("No IPU hardware available on this system")


# ---- custom ops --------------------------------------------------------------------------------------
_CUSTOM_OPS: Dict[Tuple[str, str, int], Callable] = {}


def register_custom_op(domain: str, name: str, version: int, fn: Optional[Callable] = None):
    """Register the torch implementation of PopART custom op ``domain::name`` version ``version``.

    ``fn(*inputs, **attributes)`` returns a tensor or a sequence of tensors and must be differentiable
    (torch ops or a ``torch.autograd.Function``). Usable as a decorator when ``fn`` is omitted.
    Registering the same op again replaces it. Not PopTorch API (PopTorch loads a ``.so``).
    """
    def register(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError("custom op implementation must be callable")
        _CUSTOM_OPS[(str(domain), str(name), int(version))] = f
        return f

    return register if fn is None else register(fn)


def unregister_custom_op(domain: str, name: str, version: int) -> None:
    _CUSTOM_OPS.pop((str(domain), str(name), int(version)), None)


def registered_custom_ops() -> List[Tuple[str, str, int]]:
    """(domain, name, version) of every registered custom op."""
    return sorted(_CUSTOM_OPS)


def _check_attributes(attributes: Dict) -> None:
    # The same rules and messages as graphcore/poptorch:python/ops.py custom_op.
    for k, v in attributes.items():
        if not isinstance(k, str):
            raise ValueError("All attribute keys must be strings.")
        if not isinstance(v, (float, int, str, list, tuple)):
            raise ValueError("Attribute values must be floats, ints, strings or a list/tuple of float, "
                             "ints of strings.")
        if isinstance(v, (list, tuple)):
            for element in v:
                if not isinstance(element, type(v[0])):
                    raise ValueError("The types in a list/tuple attribute must all be the same.")

    def error_on_non_ascii(s):
        if isinstance(s, (list, tuple)):
            for x in s:
                error_on_non_ascii(x)
        elif isinstance(s, str) and any(ord(ch) >= 128 for ch in s):
            raise ValueError(f"{s} contains non-ASCII characters.")

    for k, v in attributes.items():
        error_on_non_ascii(k)
        error_on_non_ascii(v)


def custom_op(inputs: Tuple[torch.Tensor, ...], name: str, domain: str, domain_version: int,
              example_outputs: Tuple[torch.Tensor, ...],
              attributes: Optional[Dict[str, Union[float, int, str, list, tuple]]] = None
              ) -> List[torch.Tensor]:
    """Apply custom op ``domain::name`` (version ``domain_version``) to ``inputs``; returns a list.

    ``example_outputs`` give the dtype and shape of each output; the registered implementation's
    outputs must match them.
    """
    if attributes is not None:
        _check_attributes(attributes)
    key = (str(domain), str(name), int(domain_version))
    fn = _CUSTOM_OPS.get(key)
    if fn is None:
        known = ", ".join(f"{d}::{n} v{v}" for d, n, v in registered_custom_ops()) or "none"
        raise Error(f"Unknown custom op {domain}::{name} version {domain_version}. Registered custom "
                    f"ops: {known}. Register its torch implementation with "
                    "poptorch.register_custom_op(domain, name, version, fn) (the emulator's stand-in "
                    "for loading the op's shared library).")
    outputs = fn(*inputs, **(attributes or {}))
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    examples = list(example_outputs)
    if len(outputs) != len(examples):
        raise Error(f"Custom op {domain}::{name} returned {len(outputs)} outputs but example_outputs "
                    f"has {len(examples)}")
    for i, (out, ex) in enumerate(zip(outputs, examples)):
        if not isinstance(out, torch.Tensor) or out.dtype != ex.dtype or out.shape != ex.shape:
            got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise Error(f"Custom op {domain}::{name} output {i} is {got} but example_outputs[{i}] is "
                        f"{ex.dtype} {tuple(ex.shape)}")
    return outputs


# ---- control flow and annotations ----------------------------------------------------------------------
def for_loop(count: int, body: Callable, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
    """On-device loop: ``inputs = body(*inputs)`` ``count`` times; returns the last outputs as a list."""
    if not isinstance(inputs, list):
        raise ValueError("poptorch.for_loop expects input tensors (inputs) to be a list of tensors. "
                         "(Object is not list)")
    for ind, tensor in enumerate(inputs):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError("poptorch.for_loop expects input tensors (inputs) to be a list of tensors. "
                             f"(Object contained in list at index {ind} is not torch.tensor)")
    values = [t.clone() for t in inputs]
    for _ in range(count):
        out = body(*values)
        values = [out] if isinstance(out, torch.Tensor) else list(out)
    return values


class Attribute(contextlib.ContextDecorator):
    """``with poptorch.Attribute(__outline={...}):`` PopART op attributes (no effect here)."""

    def __init__(self, **kwargs) -> None:
        self._kwargs = kwargs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class NameScope(Attribute):
    """``with poptorch.NameScope("layer"):`` names ops in the PopART graph (no effect here)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)


def setLogLevel(level: Union[str, int]) -> None:
    """PopTorch's log levels (TRACE, DEBUG, INFO, WARN, ERR, OFF or an int) for the emulator's logger."""
    levels = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
              "ERR": logging.ERROR, "OFF": logging.CRITICAL + 1}
    if isinstance(level, int):
        value = [logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                 logging.CRITICAL, logging.CRITICAL + 1][max(0, min(level, 6))]
    else:
        value = levels[level.upper()]
    logging.getLogger("groupbert.ipu.emulator").setLevel(value)
