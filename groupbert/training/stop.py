"""Stopping on request: SIGTERM (what Slurm, Kubernetes and ``timeout`` send first, before SIGKILL) asks the
run to save a checkpoint at the next step boundary and stop, instead of dying mid-step with the work since
the last checkpoint lost. A second SIGTERM acts at once (the handler is removed after the first).

Every rank of a torchrun or PopRun job receives the signal, but not necessarily between the same two steps:
the ranks agree (a one-element all-reduce per step, only when there are several) so that all of them stop
after the same step and none waits forever in a collective of a step the others did not start.
"""
from __future__ import annotations

import logging
import signal
import threading

import torch

logger = logging.getLogger(__name__)


class StopRequest:
    """Installs the SIGTERM handler from construction until :meth:`close` (main thread only: Python delivers
    signals there; elsewhere, e.g. a run inside a test thread, nothing is installed)."""

    def __init__(self, dist):
        self.dist = dist
        self.signum: int | None = None
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        self._previous = None
        logger.warning("%s received: saving a checkpoint after this step, then stopping (send it again to "
                       "stop at once)", signal.Signals(signum).name)

    def requested(self) -> bool:
        """Whether any rank was asked to stop (a collective when the job has several ranks: call it at the
        same point on every rank)."""
        if self.dist.world_size > 1 and self.dist.enabled:
            flag = torch.tensor([1.0 if self.signum else 0.0])
            self.signum = self.signum or (signal.SIGTERM if self.dist.all_reduce_sum(flag).item() > 0 else None)
        return self.signum is not None

    def close(self) -> None:
        """Put the previous handler back (idempotent)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
