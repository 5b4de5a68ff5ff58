"""What a person reads while a run trains and when it ends (the records themselves are ``run_log``'s).

- :class:`Progress`: with ``logging.progress_bar`` a tqdm bar over the steps (the engine puts the losses,
  ``seq/s``, ``tok/s`` and ``mfu`` of the latest train record beside it), and while it is open every log
  line goes through ``tqdm.write`` (``logging_redirect_tqdm``), so lines and bar never share a terminal
  row; without the bar, an INFO line every ``logging.progress_every_s`` seconds with the step, the percent
  done, sequences/s, tokens/s and MFU since the previous line and the ETA (all over wall time, evaluations
  and checkpoints included, so MFU here is lower than the train records', which time the steps only).
  ``--quiet`` (warnings only) shows neither.
- :func:`log_summary`: the end of a run in a few INFO lines: how it ended, steps and wall time, the mean
  training throughput and MFU, the final and the best evaluation, where the checkpoints are, and the
  export command.
- :func:`resolved_backend`: the backend that ran (``auto`` resolved), for W&B's tag.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from groupbert.config import RunConfig

logger = logging.getLogger(__name__)
_clock = time.monotonic   # wall time for rates and the ETA (a test replaces it)


def resolved_backend(cfg: RunConfig, device) -> str:
    """``cpu`` / ``cuda`` for the host backends (``auto`` resolved by the device it picked), ``ipu`` /
    ``ipu-model`` for PopTorch."""
    return cfg.runtime.backend if cfg.runtime.on_ipu else getattr(device, "type", str(device))


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """The bar, or periodic progress lines, over steps ``initial..total``; :meth:`close` is idempotent (the
    engine calls it on every way out, so log lines are never left redirected)."""

    def __init__(self, cfg: RunConfig, desc: str, total: int, initial: int, enabled: bool, rate=None):
        """``rate``: the run's ``throughput.RunRate`` (MFU in the progress lines), or None."""
        self.total, self.step, self.rate = total, initial, rate
        self.bar_on = bool(enabled and cfg.logging.progress_bar)
        self.lines_on = bool(enabled and not cfg.logging.progress_bar)
        self.every_s = cfg.logging.progress_every_s
        self._stack = contextlib.ExitStack()
        self._bar = tqdm(total=total, initial=initial, disable=not self.bar_on, desc=desc, unit="step",
                         dynamic_ncols=True)
        if self.bar_on:
            self._stack.enter_context(logging_redirect_tqdm())
        now = _clock()
        self._start_t, self._start_step = now, initial            # for the ETA
        self._last_t, self._samples, self._tokens = now, 0.0, 0.0  # since the previous line
        self.closed = False

    def set_postfix(self, values: dict) -> None:
        self._bar.set_postfix(values)

    def update(self, steps: int, samples: float, tokens: float) -> None:
        """``steps`` optimizer steps done, which trained on ``samples`` sequences of ``tokens`` row tokens."""
        self.step += steps
        self._bar.update(steps)
        if not self.lines_on:
            return
        self._samples += samples
        self._tokens += tokens
        now = _clock()
        if now - self._last_t >= self.every_s or self.step >= self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        window = max(now - self._last_t, 1e-9)
        per_step = (now - self._start_t) / max(self.step - self._start_step, 1)
        eta = per_step * max(self.total - self.step, 0)
        mfu = self.rate.mfu(self._tokens, window) if self.rate is not None else None
        logger.info("step %d/%d (%.0f%%), %.1f seq/s, %.0f tokens/s, %sETA %s", self.step, self.total,
                    100.0 * self.step / max(self.total, 1), self._samples / window, self._tokens / window,
                    "" if mfu is None else f"MFU {100 * mfu:.1f}%, ", format_duration(eta))
        self._last_t, self._samples, self._tokens = now, 0.0, 0.0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._bar.close()
        self._stack.close()


def _pointer(root: Path, name: str) -> Optional[Path]:
    """The ``step-N`` directory that ``checkpoints/<name>`` names, if it exists."""
    try:
        target = root / (root / name).read_text().strip()
    except OSError:
        return None
    return target if target.name.startswith("step-") and target.is_dir() else None


def log_summary(run_dir: Path, status: str, step: int, total_steps: int, *, first_step: int, seconds: float,
                metric: str, last_eval: Optional[dict], best: Optional[dict], describe=None,
                error: Optional[str] = None, eval_every: int = 0, throughput: Optional[dict] = None) -> None:
    """The end of a run as INFO lines, one per fact (``--quiet`` hides them; an error is on stderr then).
    ``metric``: the task's best-checkpoint key (``eval_loss``, ``eval_f1``); ``describe(record)``: the task's
    one-line description of an evaluation; ``throughput``: the mean ``seq_per_s``, ``tokens_per_s`` and
    ``mfu`` over the training steps (``throughput.RunRate.rates``)."""
    run_dir = Path(run_dir)
    lines = [f"run {status}: {run_dir}, step {step} of {total_steps}; {format_duration(seconds)} wall"
             + (f" (resumed at step {first_step})" if first_step else "")]
    if error:
        lines.append(f"  error: {error}")
    if throughput:
        mfu = throughput.get("mfu")
        lines.append(f"  training throughput: {throughput['seq_per_s']:.1f} sequences/s, "
                     f"{throughput['tokens_per_s']:.0f} tokens/s" + ("" if mfu is None else f", MFU {100 * mfu:.1f}%")
                     + " (mean over the steps)")
    if last_eval and last_eval.get(metric) is not None:
        text = describe(last_eval) if describe else ""
        lines.append(f"  final evaluation (step {last_eval.get('step')}): {metric} {last_eval[metric]:.5g}"
                     + (f"; {text}" if text else ""))
    else:
        lines.append("  final evaluation: none")
    if best:
        lines.append(f"  best evaluation: {best['metric']} {best['value']:.5g} at step {best['step']}")
    elif eval_every:
        lines.append("  best evaluation: none recorded")
    else:
        lines.append("  best evaluation: not tracked (train.eval_every: 0)")
    root = run_dir / "checkpoints"
    latest, best_dir = _pointer(root, "latest"), _pointer(root, "best")
    if latest is None:
        lines.append("  checkpoints: none saved")
    else:
        lines.append(f"  checkpoints: latest {latest}" + (f", best {best_dir}" if best_dir else ""))
        if status == "stopped":
            lines.append(f"  continue: --resume {run_dir}")
        lines.append(f"  export: python -m groupbert.export {run_dir} --output {run_dir / 'hf'}")
    lines.append(f"  records: {run_dir / 'metrics.jsonl'}")
    for line in lines:
        logger.info("%s", line)
