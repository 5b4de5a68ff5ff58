"""C++ kernels for CPU training, each registered as a torch op in the ``groupbert`` namespace, with a
pure-PyTorch reference as fallback (README, "Custom C++ ops").

- :func:`grouped_conv1d`: grouped 1-D "same" convolution on the [batch, seq, hidden] layout, forward and
  backward in C++ (``csrc/grouped_conv1d.cpp``; ``grouped_conv.py`` registers autograd and fake kernels),
  also for packed rows (``segment_ids``: the window is cut at every run of equal ids).
- :func:`fused_adamw_` / :func:`fused_lamb_`: one multi-tensor AdamW / LAMB update for a parameter group
  (``csrc/fused_optim.cpp``; ``fused_optim.py``). ``optimizers.AdamW`` and ``optimizers.LAMB`` call them
  by default (``fused=None`` picks them where built and the tensors qualify).

``make setup`` compiles them; ``GROUPBERT_CUSTOM_OPS=auto|on|off`` (or ``runtime.custom_ops`` in a
config) chooses between them and the reference; see ``_build.py``. :func:`status` says what is in use.
"""
from __future__ import annotations

from custom_ops._build import LIBRARIES, CustomOpsError, available, errors, mode, set_mode
from custom_ops.fused_optim import fused_adamw_, fused_lamb_
from custom_ops.grouped_conv import grouped_conv1d, grouped_conv1d_reference, grouped_conv1d_segments_reference

__all__ = ["CustomOpsError", "available", "fused_adamw_", "fused_lamb_", "grouped_conv1d",
           "grouped_conv1d_reference", "grouped_conv1d_segments_reference", "mode", "set_mode", "status"]


def status() -> dict[str, str]:
    """Library name -> "c++" or "reference (<reason>)", loading the libraries if needed."""
    out = {}
    for name in LIBRARIES:
        if available(name):
            out[name] = "c++"
        else:
            out[name] = f"reference ({errors().get(name, 'GROUPBERT_CUSTOM_OPS=off')})"
    return out
