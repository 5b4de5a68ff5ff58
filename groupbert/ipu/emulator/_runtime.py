"""Process-wide state of the emulated device while an executor runs the model.

PopTorch knows it is tracing for the IPU through ``poptorch._impl.isRunningOnIpu()`` and the class
attribute ``poptorch.Block._stages_manager`` (set by the execution strategy's ``onStartTracing``). The
emulator keeps the first here; the stage manager lives on :class:`~.blocks.Block` as in PopTorch.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Tuple


class _Runtime:
    def __init__(self) -> None:
        self.running = False  # isRunningOnIpu()
        # (loss, reduction, kind) of every identity_loss call (kind "identity") of the current forward and,
        # during a compile trace, of every torch loss function (kind: its name); None when not recording
        self.losses: Optional[List[Tuple[Any, str, str]]] = None
        # called with the outputs of recomputationCheckpoint during a compile trace, or None
        self.on_checkpoint: Optional[Callable[[Any], None]] = None


RUNTIME = _Runtime()


@contextlib.contextmanager
def running(record_losses: bool = False):
    """Mark the code inside as running on the (emulated) IPU; optionally record identity losses.

    Yields the list the identity losses are appended to (``None`` if not recorded).
    """
    saved = RUNTIME.running, RUNTIME.losses
    RUNTIME.running = True
    RUNTIME.losses = [] if record_losses else None
    try:
        yield RUNTIME.losses
    finally:
        RUNTIME.running, RUNTIME.losses = saved
