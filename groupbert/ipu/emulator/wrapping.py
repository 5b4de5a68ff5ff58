"""How ``trainingModel`` wraps the user's module so that host weights are read back from the device lazily.

Follows graphcore/poptorch (sdk-release-3.4) ``python/_poplar_executor.py`` (``PoplarExecutor.__init__``:
classes ``PoptorchModel``, ``PoptorchParameter``, ``PoptorchBuffer``; ``_install_state_hooks``) and
``python/_impl.py`` (``registerWrapperType``, ``_pickleUnwrapObject``, ``_restoreWrapperIfNecessary``,
``unwrapModelIfNecessary``, ``rewrapModelIfNecessary``, ``isWrapped``):

- the user's module gets a generated subclass named ``Poptorch<ClassName>`` (``isinstance`` still holds);
  reading its ``_parameters``, ``_buffers`` or ``forward``, an attribute that resolves to a Parameter, or
  calling ``state_dict()`` first runs the executor's ``copyWeightsToHostIfNeeded()``;
- every parameter becomes a ``PoptorchParameter`` and every buffer a ``PoptorchBuffer``: any attribute
  access on them, and any torch function they are passed to (torch looks ``__torch_function__`` up through
  ``__getattribute__``), does the same;
- ``state_dict()`` of the wrapped module returns unwrapped shallow copies (loadable without PopTorch);
- pickling or copying a wrapped object stores an unwrapped copy plus a reference to
  :func:`_restore_wrapper`: ``copy.copy`` keeps the wrapper, ``torch.save``/``pickle`` yields a plain
  object when loaded (the registry that restores wrappers is empty in a fresh process). PopTorch
  registers this with ``copyreg``; here the wrapper classes define ``__reduce_ex__`` (same effect, and
  nothing accumulates in ``copyreg.dispatch_table``);
- the executor is referenced weakly from the generated classes only: nothing is stored in the module's
  or the tensors' ``__dict__``.

Deviation: PopTorch's ``PoptorchBuffer.__torch_function__`` converts results to ``PoptorchBuffer``; here
torch functions on buffers return plain tensors (host evaluation stays on torch's C++ fast path).
"""
from __future__ import annotations

import collections
import copy
import weakref
from typing import Any, Dict, List, Tuple

import torch

from .errors import Error

__all__ = ["is_wrapped", "install", "uninstall", "unwrap", "rewrap", "base_class"]

_BASE = "_poptorch_emulator_wrapped_class"  # class attribute of a wrapper class: the class it wraps

# unwrapped copies made while pickling/copying a wrapped object: id -> (weak ref, wrapper class)
_registry: Dict[int, Tuple[weakref.ref, type]] = {}


def base_class(cls: type):
    """The class a wrapper class wraps, or None if ``cls`` is not a wrapper class."""
    return cls.__dict__.get(_BASE)


def is_wrapped(obj: Any) -> bool:
    """``poptorch._impl.isWrapped``, looking at ``type(obj)`` only (which never triggers a copy)."""
    return _BASE in type(obj).__dict__


def _remember(obj: Any, wrapper: type) -> None:
    key = id(obj)

    def forget(ref, key=key):
        entry = _registry.get(key)
        if entry is not None and entry[0] is ref:
            del _registry[key]

    _registry[key] = (weakref.ref(obj, forget), wrapper)


def _restore_wrapper(obj: Any) -> Any:
    """``_impl._restoreWrapperIfNecessary``: give a copy made by :func:`_reduce_unwrapped` its wrapper back."""
    entry = _registry.get(id(obj))
    if entry is not None and entry[0]() is obj:
        obj.__class__ = entry[1]
    return obj


def _reduce_unwrapped(obj: Any, protocol: int):
    """``_impl._pickleUnwrapObject``: reduce to an unwrapped shallow copy plus :func:`_restore_wrapper`."""
    wrapper = type(obj)
    obj.__class__ = base_class(wrapper)
    try:
        other = copy.copy(obj)
    finally:
        obj.__class__ = wrapper
    _remember(other, wrapper)
    return _restore_wrapper, (other,)


def _unwrapped_copy(value: Any) -> Any:
    """``_impl.unwrapIfWrapped(copy.copy(v))``: a shallow copy (shared storage) of the plain class."""
    other = copy.copy(value)
    base = base_class(type(other))
    if base is not None:
        other.__class__ = base
    return other


def _make_classes(executor, model_cls: type) -> Tuple[type, type, type]:
    """The three wrapper classes of one training executor (PoplarExecutor.__init__ in PopTorch)."""
    parent = weakref.ref(executor)

    def sync() -> None:
        p = parent()
        if p is not None and p._dirty_host_weights:
            p.copyWeightsToHostIfNeeded()

    class PoptorchModel(model_cls):
        def copyWeightsToHostIfNeeded(self) -> bool:
            """Return True if the weights on the host were dirty and have been updated."""
            p = parent()
            return p.copyWeightsToHostIfNeeded() if p is not None else False

        def destroy(self) -> None:
            """Destroy the model: release the IPUs and the executable."""
            p = parent()
            if p is not None:
                p.destroy()

        def __getattribute__(self, name):
            if name == "_host_weights_version":
                p = parent()
                return None if p is None else p._host_weights_version
            if name in ("_buffers", "_parameters", "forward"):
                sync()
            return super().__getattribute__(name)

        def __getattr__(self, name):
            attribute = super().__getattr__(name)
            if isinstance(attribute, torch.nn.Parameter):
                sync()
            return attribute

        def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
            """Shallow copies of the wrapped model's state, unwrapped (loadable without PopTorch)."""
            out = collections.OrderedDict()
            seen: Dict[int, Any] = {}
            for k, v in super().state_dict(*args, destination=destination, prefix=prefix,
                                           keep_vars=keep_vars).items():
                if id(v) not in seen:
                    seen[id(v)] = _unwrapped_copy(v)
                out[k] = seen[id(v)]
            return out

        def __reduce_ex__(self, protocol):
            return _reduce_unwrapped(self, protocol)

    class PoptorchParameter(torch.nn.Parameter):
        # torch.nn.Parameter's own __torch_function__ (disabled) is kept: torch still reads it through
        # __getattribute__ below for every op, which is what triggers the copy (as in PopTorch).
        def __getattribute__(self, name):
            sync()
            return object.__getattribute__(self, name)

        def __reduce_ex__(self, protocol):
            return _reduce_unwrapped(self, protocol)

    class PoptorchBuffer(torch.Tensor):
        __torch_function__ = torch._C._disabled_torch_function_impl

        def __getattribute__(self, name):
            sync()
            return object.__getattribute__(self, name)

        def __reduce_ex__(self, protocol):
            return _reduce_unwrapped(self, protocol)

    for cls, base in ((PoptorchModel, model_cls), (PoptorchParameter, torch.nn.Parameter),
                      (PoptorchBuffer, torch.Tensor)):
        setattr(cls, _BASE, base)
    PoptorchModel.__name__ = PoptorchModel.__qualname__ = "Poptorch%s" % model_cls.__name__
    PoptorchModel.__module__ = model_cls.__module__
    return PoptorchModel, PoptorchParameter, PoptorchBuffer


def install(executor, model: torch.nn.Module) -> None:
    """Wrap ``model`` (the user's module), its parameters and buffers for ``executor``
    (``_install_state_hooks`` and the class swap at the end of ``PoplarExecutor.__init__``)."""
    model_cls, param_cls, buffer_cls = _make_classes(executor, type(model))
    for p in model.parameters():
        p.__class__ = param_cls
    for b in model.buffers():
        if type(b) is not torch.Tensor and not is_wrapped(b):
            raise Error(f"All buffers must be an instance of torch.Tensor (Got {type(b)})")
        b.__class__ = buffer_cls
    model.__class__ = model_cls


def uninstall(model: torch.nn.Module) -> None:
    """``_impl.unwrapModelIfNecessary`` (what ``destroy()`` does to the user's module)."""
    for t in list(model.parameters()) + list(model.buffers()):
        base = base_class(type(t))
        if base is not None:
            t.__class__ = base
    base = base_class(type(model))
    if base is not None:
        model.__class__ = base


def unwrap(objects) -> List[Tuple[Any, type]]:
    """Take the wrapper classes off ``objects`` (for a run: no hook on the hot path); see :func:`rewrap`."""
    undone = []
    for obj in objects:
        cls = type(obj)
        base = cls.__dict__.get(_BASE)
        if base is not None:
            obj.__class__ = base
            undone.append((obj, cls))
    return undone


def rewrap(undone: List[Tuple[Any, type]]) -> None:
    for obj, cls in undone:
        obj.__class__ = cls
