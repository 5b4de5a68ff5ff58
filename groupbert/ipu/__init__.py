"""The IPU layer: one import point for PopTorch, the options builder, model pipelining, the planner.

``from groupbert.ipu import poptorch`` gives Graphcore's PopTorch when it is installed (it ships with the
Poplar SDK, not PyPI) and otherwise the built-in emulator (``groupbert.ipu.emulator``), which implements
the PopTorch API subset this application uses with PopTorch's semantics on the CPU. ``USING_EMULATOR``
says which one is in use. Set ``GROUPBERT_IPU_EMULATOR=1`` to use the emulator even where PopTorch is
installed (for comparing the two).
"""
from __future__ import annotations

import importlib
import os


def _load_poptorch():
    if os.environ.get("GROUPBERT_IPU_EMULATOR", "0") != "1":
        try:
            return importlib.import_module("poptorch"), False
        except ImportError:
            pass
    return importlib.import_module("groupbert.ipu.emulator"), True


poptorch, USING_EMULATOR = _load_poptorch()
if USING_EMULATOR:  # the emulator's custom_op registry routes to the C++ kernels (custom_ops/emulator_ops.py)
    from custom_ops.emulator_ops import register_emulator_ops
    register_emulator_ops(poptorch)

__all__ = ["poptorch", "USING_EMULATOR"]
