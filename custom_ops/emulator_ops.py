"""The kernels under their PopART custom-op names, for ``poptorch.custom_op``.

On IPU hardware a PopART custom op is a Poplar codelet in a shared library; this project ships none
(GroupBERT's grouped convolution lowers natively from ``nn.Conv1d(groups=...)``, and the optimizer
update is PopART's own). The built-in emulator's registry takes a torch implementation instead, so a
model written with ``poptorch.custom_op(..., "GroupedConv1d", "groupbert", 1, ...)`` runs there on the
same C++ kernel the CPU path uses.

    y, = poptorch.custom_op([x, conv.weight, conv.bias], "GroupedConv1d", "groupbert", 1,
                            example_outputs=[x], attributes={"groups": conv.groups})
"""
from __future__ import annotations

from types import ModuleType

DOMAIN, VERSION = "groupbert", 1


def _grouped_conv1d(input, weight, bias=None, *, groups: int):
    from custom_ops.grouped_conv import grouped_conv1d
    return grouped_conv1d(input, weight, bias, groups)


OPS = {"GroupedConv1d": _grouped_conv1d}


def register_emulator_ops(poptorch: ModuleType) -> None:
    """Register every op in the emulator's ``custom_op`` registry (a no-op for real PopTorch, whose
    custom ops come from ``.so`` files)."""
    register = getattr(poptorch, "register_custom_op", None)
    if register is None:
        return
    for name, fn in OPS.items():
        register(DOMAIN, name, VERSION, fn)
