"""How a call's arguments are bound to ``forward`` and checked against the compiled ones.

Follows graphcore/poptorch (sdk-release-3.4) ``python/_args_parser.py`` (``ArgsParser.__call__``,
``ArgsParser.Args.validateInputs``) and ``python/_poplar_executor.py`` (``PoplarExecutor.__call__``):

- the arguments are bound to the parameters of the model's ``forward`` (read once, when the wrapper is
  created): positional ones in order, keyword ones moved to their position, omitted ones replaced by their
  Python default (so an omitted optional argument is compiled as its default, e.g. ``None``); after a
  ``*args`` parameter (and for ``**kwargs``) arguments stay named. A parameter without default that is
  not given raises "Mandatory parameter X missing"; too many arguments, an unknown keyword and an argument
  given twice are assertions;
- non-contiguous input tensors are made contiguous (one warning);
- after compilation every call is compared with the compiled inputs: positional count, type
  ("Type mismatch for X": a tensor where ``None`` was compiled and vice versa), tuple length, dict keys,
  dtype, shape and, for other values (ints, strings ... that the graph holds as constants), equality.
  Each message ends with PopTorch's advice to create a new wrapper or call ``destroy()``.

Deviation: keyword-only parameters stay named (PopTorch would pass them positionally).
The compiled inputs are recorded as :class:`_TensorSpec` (type, dtype, shape), not as references to the
caller's tensors.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Dict, List

import torch

from .errors import AssertError, Error

__all__ = ["Args", "ArgsParser", "InputSpec"]

logger = logging.getLogger(__name__)

_END = ("\nThis error occurred because the inputs passed at runtime don't match the inputs used to compile "
        "the model.\nTo recompile the model for the new inputs create a new inferenceModel / trainingModel "
        "wrapper or call destroy() on the curent one and try again.")


class Args:
    """Bound arguments: ``args`` (with their parameter names) and ``kwargs`` (the named rest)."""

    def __init__(self) -> None:
        self.args: List[Any] = []
        self.arg_names: List[str] = []
        self.kwargs: Dict[str, Any] = {}


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        items = [(k, _map_tensors(v, fn)) for k, v in obj.items()]
        try:
            return type(obj)(items)
        except Exception:  # noqa: BLE001 - a mapping type without a dict-like constructor
            return dict(items)
    if isinstance(obj, (list, tuple)):
        items = [_map_tensors(v, fn) for v in obj]
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        return type(obj)(items)
    return obj


def _flatten_tensors(obj) -> List[Any]:
    """``_utils.flattenTensorStructure``: the tensors of nested tuples/lists/dicts, in order."""
    if isinstance(obj, (torch.Tensor, _TensorSpec)):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten_tensors(v)]
    return []


class ArgsParser:
    """``_args_parser.ArgsParser``: binds ``(args, kwargs)`` to ``model.forward``'s parameters."""

    def __init__(self, model: Any) -> None:
        fn = model.forward if isinstance(model, torch.nn.Module) else model
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        if sig is None:
            self._names = ["args", "kwargs"]
            self._kinds = [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]
            self._defaults: Dict[str, Any] = {}
        else:
            self._names = list(sig.parameters)
            self._kinds = [p.kind for p in sig.parameters.values()]
            self._defaults = {n: p.default for n, p in sig.parameters.items()
                              if p.default is not inspect.Parameter.empty}
        self._variadic = any(k in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                             for k in self._kinds)
        self._warned_not_contiguous = False

    def __call__(self, args, kwargs: Dict[str, Any], fast_path: bool = False) -> Args:
        out = Args()
        if not (self._variadic or len(args) + len(kwargs) <= len(self._names)):
            raise AssertError("Too many arguments provided: expected %s (%d) but got %d"
                              % (self._names, len(self._names), len(args) + len(kwargs)))
        if not self._variadic:
            for k in kwargs:
                if k not in self._names:
                    raise AssertError(f"{k} is not a valid parameter.Allowed values are {self._names}")
        args = list(args)
        after_varargs = False
        for i, (name, kind) in enumerate(zip(self._names, self._kinds)):
            if kind == inspect.Parameter.VAR_KEYWORD:
                for k, v in kwargs.items():
                    if k not in self._names[:i]:
                        out.kwargs[k] = v
            elif kind == inspect.Parameter.VAR_POSITIONAL or i < len(args):
                if kind == inspect.Parameter.VAR_POSITIONAL:
                    after_varargs = True
                    for j, a in enumerate(args[i:]):
                        self._check_dict(a, fast_path)
                        out.args.append(a)
                        out.arg_names.append(f"*{name}[{j}]")
                    args = []
                else:
                    self._check_dict(args[i], fast_path)
                    out.args.append(args[i])
                    out.arg_names.append(name)
                if name in kwargs:
                    raise AssertError("Parameter %s was passed more than once" % name)
            else:
                named = after_varargs or kind == inspect.Parameter.KEYWORD_ONLY
                if name in kwargs:
                    value = kwargs[name]
                    self._check_dict(value, fast_path)
                elif name in self._defaults:
                    value = self._defaults[name]
                else:
                    raise Error(f"Mandatory parameter {name} missing")
                if named:
                    out.kwargs[name] = value
                else:
                    out.args.append(value)
                    out.arg_names.append(name)
        found = []

        def contiguous(t):
            if not t.is_contiguous():
                found.append(True)
                return t.contiguous()
            return t

        out.args = [_map_tensors(a, contiguous) for a in out.args]
        out.kwargs = {k: _map_tensors(v, contiguous) for k, v in out.kwargs.items()}
        if found and not self._warned_not_contiguous:
            logger.warning("At least one input tensor is not contiguous: non-contiguous tensors will be "
                           "converted.")
            self._warned_not_contiguous = True
        return out

    @staticmethod
    def _check_dict(data, fast_path: bool) -> None:
        if fast_path:
            return
        work = [data]
        while work:
            d = work.pop()
            if isinstance(d, (tuple, list)):
                work.extend(d)
            elif isinstance(d, dict):
                logger.warning("Dicts as inputs only have partial support, they can be accessed using literal "
                               "keys, but full Python functionality is not enabled. Consider changing dict "
                               "inputs to tuple.")
                return


class _TensorSpec:
    """What the compiled graph knows of an input tensor."""

    __slots__ = ("type", "dtype", "shape")

    def __init__(self, t: torch.Tensor) -> None:
        self.type, self.dtype, self.shape = type(t), t.dtype, t.shape


class InputSpec:
    """The inputs a model was compiled with (``PoplarExecutor._executable_inputs``)."""

    def __init__(self, parsed: Args) -> None:
        self.args = [_map_tensors(a, _TensorSpec) for a in parsed.args]
        self.arg_names = list(parsed.arg_names)
        self.kwargs = {k: _map_tensors(v, _TensorSpec) for k, v in parsed.kwargs.items()}

    def validate(self, inputs: Args) -> None:
        """``ArgsParser.Args.validateInputs``: raise PopTorch's error for the first difference."""
        if len(inputs.args) != len(self.args):
            raise Error("Number of positional arguments mismatch: expected "
                        f"{len(self.args)} arguments but got {len(inputs.args)}.{_END}")
        for name, compiled, given in zip(self.arg_names, self.args, inputs.args):
            _validate(name, compiled, given)
        _validate("named arguments", self.kwargs, inputs.kwargs, named=True)


def _validate(name: str, compiled: Any, given: Any, named: bool = False) -> None:
    ctype = compiled.type if isinstance(compiled, _TensorSpec) else type(compiled)
    itype = type(given)
    if ctype != itype:
        raise Error(f"Type mismatch for {name}: expected {ctype} but got {itype}.{_END}")
    if isinstance(compiled, tuple):
        if len(compiled) != len(given):
            raise Error(f"Length mismatch for {name}: expected {len(compiled)} elements but got "
                        f"{len(given)}.{_END}")
        for i, c in enumerate(compiled):
            _validate(f"{name}[{i}]", c, given[i])
    elif isinstance(compiled, dict):
        expected, provided = set(compiled), set(given)
        if expected != provided:
            details = []
            if provided - expected:
                details.append("Unexpected arguments: " + ", ".join(sorted(provided - expected)))
            if expected - provided:
                details.append("Missing arguments: " + ", ".join(sorted(expected - provided)))
            raise Error(f"Keys mismatch for {name}: {'. '.join(details)}.{_END}")
        for k, c in compiled.items():
            _validate(k if named else f"{name}[{k}]", c, given[k])
    elif isinstance(compiled, _TensorSpec):
        if compiled.dtype != given.dtype:
            raise Error(f"Data type mismatch for {name}: expected {compiled.dtype} but got {given.dtype}.{_END}")
        if compiled.shape != given.shape:
            raise Error(f"Shape mismatch for {name}: expected {compiled.shape} but got {given.shape}.{_END}")
    else:
        compiled_tensors = _flatten_tensors(compiled)
        if compiled_tensors:
            _validate(name, tuple(compiled_tensors), tuple(_flatten_tensors(given)))
            return
        try:
            differs = bool(compiled != given)
        except Exception:  # noqa: BLE001 - objects without a boolean comparison: compare identity
            differs = compiled is not given
        if differs:
            raise Error(f"Value mismatch for {name}: expected {compiled} but got {given}.{_END}")
