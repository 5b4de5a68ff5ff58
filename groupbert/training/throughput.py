"""A run's throughput in the units that compare across models and machines: sequences/s, tokens/s,
achieved model TFLOPS and MFU (model FLOPs utilisation).

MFU follows Chowdhery et al. 2022 ("PaLM", arXiv:2204.02311, appendix B): the model FLOPs of the tokens
trained per second, ``train_flops_per_token x tokens_per_s`` (``groupbert.models.flops``: 3 x the forward's
matmul FLOPs, recomputation not counted), over the peak of all devices in use
(``groupbert.training.hardware``: per-device peak for the matmul dtype x devices). Tokens are row tokens
(``micro_batch_size x seq_len`` per micro-batch, padding included), because the model computes on all of
them; sequences count what the rows hold (several per packed row).

The FLOPs per token come from the shapes the model is actually fed: one row of the training data gives
the masked-LM slots ``P`` (``data.max_predictions``, or more in packed rows) and the pooler/NSP slots of a
packed row. Which head the model has follows from the task (:data:`TASK_HEADS`); a task not listed there
may name one in a ``flops_head`` attribute, else its FLOPs (and MFU) are unknown and recorded as null.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from groupbert.config import RunConfig
from groupbert.models.flops import forward_flops
from groupbert.training.hardware import Peak, devices_in_use, peak_flops
from groupbert.training.precision import DTYPES

logger = logging.getLogger(__name__)

#: task name -> the head its model computes (``groupbert.models.flops.HEADS``)
TASK_HEADS = {"mlm_nsp": "pretraining", "causal_lm": "lm", "squad": "qa"}


@dataclass(frozen=True)
class RunRate:
    """The run's constants for turning tokens and seconds into TFLOPS and MFU."""
    flops_per_token: Optional[float]   # training FLOPs per row token (None: unknown)
    peak: Peak                         # one device's peak for the matmul dtype
    devices: int                       # devices MFU divides by
    precision: str                     # the matmul dtype the peak is for: fp32 | bf16 | fp16

    @property
    def peak_flops_per_s(self) -> Optional[float]:
        """The peak of all devices in use."""
        return None if self.peak.flops_per_s is None else self.peak.flops_per_s * self.devices

    def mfu(self, tokens: float, seconds: float) -> Optional[float]:
        """Achieved model FLOPs over the peak, as a fraction (None when either is unknown)."""
        if self.flops_per_token is None or self.peak_flops_per_s is None:
            return None
        return self.flops_per_token * tokens / max(seconds, 1e-9) / self.peak_flops_per_s

    def rates(self, sequences: float, tokens: float, seconds: float) -> dict:
        """The train record's throughput keys over ``seconds`` of training steps."""
        seconds = max(seconds, 1e-9)
        tokens_per_s = tokens / seconds
        return {"seq_per_s": sequences / seconds, "tokens_per_s": tokens_per_s,
                "tflops": None if self.flops_per_token is None else self.flops_per_token * tokens_per_s / 1e12,
                "mfu": self.mfu(tokens, seconds)}

    def run_record(self) -> dict:
        """Fields of the step-0 ``run`` record."""
        return {"flops_per_token": self.flops_per_token, "peak_tflops": self.peak.tflops,
                "peak_devices": self.devices, "peak_source": self.peak.source, "precision": self.precision}

    def describe(self) -> str:
        """The INFO line at the start of a run."""
        flops = ("FLOPs unknown for this task" if self.flops_per_token is None
                 else f"{self.flops_per_token / 1e9:.3g} GFLOP per token (train)")
        if self.peak.flops_per_s is None:
            return f"model: {flops}; peak unknown ({self.peak.source}), so no MFU"
        devices = f" x {self.devices} devices" if self.devices > 1 else ""
        return f"model: {flops}, peak {self.peak.tflops:.3g} TFLOPS {self.precision}{devices} ({self.peak.source})"


def run_rate(cfg: RunConfig, task, runtime, dataset=None) -> RunRate:
    """The constants for this run: FLOPs per token of the task's model on the rows of ``dataset``
    (anything with ``gather(indices, epoch)``; None: the configured shapes) and the devices' peak."""
    precision = ("fp16" if cfg.ipu.half else "fp32") if runtime.on_ipu else runtime.precision.name
    try:
        peak = peak_flops(runtime.device, DTYPES.get(precision), cfg)
    except Exception as e:  # noqa: BLE001 - a device that cannot be asked its name: no MFU, not a failed run
        peak = Peak(None, f"could not determine the peak: {type(e).__name__}: {e}")
    return RunRate(flops_per_token=flops_per_token(cfg, task, dataset), peak=peak,
                   devices=devices_in_use(cfg, runtime.dist.world_size), precision=precision)


def flops_per_token(cfg: RunConfig, task, dataset=None) -> Optional[float]:
    """Training FLOPs per row token for ``task``'s model (None: a task without a known head)."""
    head = getattr(task, "flops_head", None) or TASK_HEADS.get(getattr(task, "name", None))
    if head is None:
        return None
    T, P, S = cfg.data.seq_len, cfg.data.max_predictions, 1
    shapes = _row_shapes(dataset)
    T = shapes.get("input_ids", T)
    P = shapes.get("masked_lm_positions", P)
    S = shapes.get("cls_positions", S)
    try:
        forward = forward_flops(cfg.model, 1, T, P if head == "pretraining" else None, head=head,
                                sequences_per_row=S)
    except ValueError as e:   # a head the model type does not have (a custom task's flops_head)
        logger.warning("no FLOP count for this run: %s", e)
        return None
    return 3 * forward / cfg.data.seq_len


def _row_shapes(dataset) -> dict:
    """The last dimension of each column of the first row (empty when there is no row to read)."""
    if dataset is None or not hasattr(dataset, "gather"):
        return {}
    try:
        row = dataset.gather(np.arange(1), 0)
        return {k: int(v.shape[-1]) for k, v in row.items() if getattr(v, "ndim", 0) >= 2}
    except Exception as e:  # noqa: BLE001 - throughput figures are a report, never a reason to fail
        logger.debug("could not read a row's shapes: %s: %s", type(e).__name__, e)
        return {}
