"""A run directory's guarantees: one writer at a time, an earlier attempt neither lost nor duplicated, no
leftovers of interrupted writes, and a resume that runs the settings its ``config.yaml`` records.

- **Lock**: the writing process holds ``fcntl.flock`` on ``<run>/.lock`` for the whole run. The kernel
  drops the lock when the process dies, however it dies, so it never goes stale; a second run or resume
  into the same directory is refused (exit 2) with the holder's PID and host.
- **New run** into a directory that holds checkpoints is refused (``--resume`` continues it); into one that
  holds only the records of an attempt stopped before its first checkpoint (``metrics.jsonl``,
  ``config.yaml``) too: ``--resume`` starts that run again in place, from step 0 with its own settings.
- **Resume** refuses settings that differ from the run's ``config.yaml`` except :data:`CHANGEABLE_ON_RESUME`
  (where and how often to log, save and evaluate; the run's length): the saved optimizer state and schedule
  would win over a new ``optimizer.lr`` silently, while the records would claim the new value ran.
- **Interrupted saves** (``checkpoints/.step-N.tmp-PID``) are removed when the lock is taken.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Optional

import yaml

from groupbert.config import ConfigError, RunConfig, recorded_settings
from groupbert.training import checkpoint as ckpt_io

logger = logging.getLogger(__name__)

# Keys a resume may change: where and how often the run logs, saves and evaluates, how fast a step
# computes, and train.max_steps ("train longer": the schedule is recomputed for the new length from the
# current step, and config.yaml records the new length), never what an optimizer step does.
CHANGEABLE_ON_RESUME = ("logging.", "runtime.threads", "runtime.custom_ops", "runtime.compile", "data.cache_dir",
                        "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.eval_batches",
                        "train.eval_at_start", "train.init_checkpoint", "train.max_steps")
RECORDS = ("metrics.jsonl", "config.yaml")   # what a started run has written before its first checkpoint


class RunLock:
    """``flock`` on ``<run>/.lock`` for the life of the run (the kernel releases it if the process dies)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(f"{run_dir} is in use by a running job ({holder}); wait for it to end or choose "
                              f"another --output-dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        if self._created and {p.name for p in self.run_dir.iterdir()} == {".lock"}:
            self.path.unlink()       # a run that failed before writing anything leaves no directory behind
            self.run_dir.rmdir()
        os.close(self._fd)           # closing the descriptor drops the flock
        self._fd = None


def open_run(run_dir: Path, resume: bool, cfg: RunConfig, is_main: bool
             ) -> tuple[Optional[RunLock], Optional[ckpt_io.Checkpoint], bool]:
    """Lock the run directory (rank 0, the writer) and decide how the run starts: returns (lock, the
    checkpoint to resume from or None, whether an attempt without checkpoints is started again)."""
    lock = RunLock(run_dir) if is_main else None
    try:
        if is_main:
            for what in ckpt_io.clean_interrupted_writes(run_dir):
                logger.warning("%s: %s, left by an interrupted checkpoint write", run_dir, what)
        started = [name for name in RECORDS if (run_dir / name).exists()]
        if not resume:
            if ckpt_io.has_checkpoint(run_dir):
                raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume {run_dir} to continue it "
                                  f"or choose another --output-dir")
            if started:
                raise ConfigError(f"{run_dir} holds a run that stopped before its first checkpoint "
                                  f"({', '.join(started)}); pass --resume {run_dir} to start it again in place with "
                                  f"its own config.yaml, or choose another --output-dir")
            return lock, None, False
        check_unchanged(run_dir / "config.yaml", cfg)
        if not ckpt_io.has_checkpoint(run_dir) and started:
            logger.warning("%s has no checkpoint yet: starting the run again from step 0 with its config.yaml",
                           run_dir)
            return lock, None, True
        return lock, ckpt_io.read_checkpoint(run_dir), False
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def check_unchanged(config_yaml: Path, cfg: RunConfig) -> None:
    """Refuse a resume whose settings differ from the run's ``config.yaml`` outside
    :data:`CHANGEABLE_ON_RESUME`, naming every such key with both values."""
    try:
        saved = yaml.safe_load(config_yaml.read_text()) or {}
    except FileNotFoundError:
        return   # a run directory written before config.yaml existed: nothing to compare with
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config_yaml} is unreadable: {e}") from None
    saved.pop("derived", None)
    now = _flat(json.loads(json.dumps(recorded_settings(cfg))))
    before = _flat(json.loads(json.dumps(saved)))
    changed = [k for k in now if k in before and now[k] != before[k] and not k.startswith(CHANGEABLE_ON_RESUME)]
    if changed:
        diffs = "; ".join(f"{k}: {before[k]!r} in the run, {now[k]!r} now" for k in changed)
        raise ConfigError(f"--resume continues {config_yaml.parent} with the settings it ran with, and these differ: "
                          f"{diffs}. Start a new run (--set train.init_checkpoint={config_yaml.parent} takes its "
                          f"weights) to change them", key=changed[0])


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
