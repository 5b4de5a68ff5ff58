"""PopTorch's exception types (graphcore/poptorch:python/__init__.py imports ``Error``,
``RecoverableError``, ``UnrecoverableError`` from ``poptorch_core``; ``_impl.createPoptorchError``).

``Error`` derives from ``RuntimeError`` here. Checks that PopTorch performs with a Python ``assert``
(the batch-dimension check of ``_poplar_executor``, option-key checks) raise :class:`AssertError`,
which is both an ``Error`` and an ``AssertionError`` so either ``except`` clause catches it.
:class:`OutOfMemoryError` is the emulator's own (PopTorch reports ``popart::memory_allocation_err``
from Poplar's compiler).
"""
from __future__ import annotations

import types

__all__ = ["Error", "RecoverableError", "UnrecoverableError", "AssertError", "OutOfMemoryError",
           "createPoptorchError", "poptorch_core", "NO_EXECUTABLE_ERR"]

# graphcore/poptorch:python/_poplar_executor.py
NO_EXECUTABLE_ERR = "Model has not been compiled or has been destroyed."


class Error(RuntimeError):
    """Base class of PopTorch's errors (``poptorch.Error`` / ``poptorch.poptorch_core.Error``)."""

    @property
    def message(self) -> str:
        return str(self)


class RecoverableError(Error):
    pass


class UnrecoverableError(Error):
    pass


class AssertError(Error, AssertionError):
    """A failed PopTorch ``assert`` (raised explicitly, so it survives ``python -O``)."""


class OutOfMemoryError(Error):
    """The emulator's per-IPU memory estimate exceeds the IPU's in-processor memory.

    ``report`` holds the :class:`groupbert.ipu.emulator.memory.IpuMemory` rows of every IPU.
    """

    bad_input = True   # groupbert.errors.BadInput: a model that does not fit its IPUs is a configuration error

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def createPoptorchError(message: str) -> Error:
    """``poptorch._impl.createPoptorchError``: build (not raise) an :class:`Error`."""
    return Error(message)


# Stand-in for the compiled extension module, so that tests written against PopTorch
# (``pytest.raises(poptorch.poptorch_core.Error)``) run unchanged.
poptorch_core = types.SimpleNamespace(Error=Error, RecoverableError=RecoverableError,
                                      UnrecoverableError=UnrecoverableError)
