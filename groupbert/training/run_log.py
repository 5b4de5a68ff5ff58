"""The run's records: ``metrics.jsonl`` (one JSON object per line) and Weights & Biases.

Every record has ``step``, ``kind`` (``run`` | ``train`` | ``eval`` | ``update`` | ``end``) and ``time`` (Unix
seconds when it was written). A run's last record is ``{"kind": "end", "status": "finished" | "diverged" |
"stopped" | "failed", ...}``: sweeps and studies read how a run ended from it. W&B runs offline by default
(``wandb sync`` uploads later); ``WANDB_MODE`` in the environment wins over ``logging.wandb.mode``. A
checkpoint stores how many records ``metrics.jsonl`` held when it was saved; on resume the file is cut back
to those (older checkpoints: to the records up to its step), so it reads as one uninterrupted run.
Non-finite numbers are written as ``null`` (JSON has no NaN); the engine warns when an evaluation gives one.
W&B's ``backend:`` tag names the backend that ran (``auto`` resolved). With ``logging.tensorboard`` the
numbers W&B gets are also written to ``<run>/tensorboard`` (``torch.utils.tensorboard``, under the same
names); with ``logging.wandb.log_checkpoints`` the latest and best checkpoints are logged as W&B artifacts
of type ``model`` when the run ends.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

from groupbert.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)


def check_tensorboard(cfg: RunConfig) -> None:
    """``logging.tensorboard`` needs the ``tensorboard`` package (torch's writer imports it): refused at start,
    naming the key, rather than after the data is prepared."""
    if cfg.logging.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("the tensorboard package is not installed: `pip install tensorboard` (or "
                          "`pip install -e '.[tensorboard]'`), or set it to false", key="logging.tensorboard")


def _scalars(record: dict) -> dict:
    """The numbers of a record, as TensorBoard takes them (W&B gets the whole record)."""
    return {k: float(v) for k, v in record.items()
            if k not in ("step", "kind", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class RunLog:
    def __init__(self, run_dir: Path, cfg: RunConfig, run_id: str, keep_records: int | None = None,
                 keep_step: int | None = None, backend: Optional[str] = None):
        """``keep_records``: keep only the first N records of an existing file; ``keep_step``: keep those up
        to that step (end records dropped either way); neither: append. ``backend``: the one that runs
        (W&B's tag; default the configured one)."""
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.path = Path(run_dir) / "metrics.jsonl"
        self.count = 0          # records in the file: what a checkpoint saved now will keep on resume
        if self.path.exists() and (keep_records is not None or keep_step is not None):
            self._truncate(keep_records, keep_step)
        elif self.path.exists():
            self.count = len(self._records())
        self._file = open(self.path, "a")
        self.wandb_run = None
        self.tensorboard = None
        mode = os.environ.get("WANDB_MODE", cfg.logging.wandb.mode)
        if mode != "disabled":
            self.wandb_run = self._init_wandb(run_dir, cfg, run_id, mode, backend or cfg.runtime.backend)
        if cfg.logging.tensorboard:
            check_tensorboard(cfg)
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    @staticmethod
    def _init_wandb(run_dir: Path, cfg: RunConfig, run_id: str, mode: str, backend: Optional[str] = None):
        import wandb
        w = cfg.logging.wandb
        config = cfg.to_dict()
        config["derived"] = cfg.derived()
        tags = list(w.tags or []) + [f"model:{cfg.model.type}", f"optimizer:{cfg.optimizer.name}",
                                     f"backend:{backend or cfg.runtime.backend}", f"seq:{cfg.data.seq_len}"]
        # Under `wandb agent` the run id and the sweep come from the agent's environment (WANDB_RUN_ID,
        # WANDB_SWEEP_ID); our own id would detach the run from its sweep.
        run_id = None if os.environ.get("WANDB_SWEEP_ID") else run_id
        return wandb.init(project=w.project, entity=w.entity, name=w.name or Path(run_dir).name,
                          tags=tags, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
                          config=config, allow_val_change=True)

    def _records(self) -> list[tuple[str, dict]]:
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                out.append((line, json.loads(line)))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def _truncate(self, keep_records: int | None, keep_step: int | None) -> None:
        records = self._records()
        if keep_records is not None:
            records = records[:keep_records]
        kept = [line for line, rec in records
                if rec.get("kind") != "end" and (keep_step is None or rec.get("step", 0) <= keep_step)]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)
        self.count = len(kept)

    def log(self, record: dict) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        record.setdefault("time", round(time.time(), 3))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1
        if self.tensorboard is not None:
            for k, v in _scalars(record).items():
                self.tensorboard.add_scalar(k, v, global_step=record["step"])
        if self.wandb_run is not None:
            step = record["step"]
            self.wandb_run.log({k: v for k, v in record.items() if k not in ("step", "kind", "time")}, step=step)
            if record.get("kind") == "eval":  # the summary keeps the final value; add the best one
                for k, v in record.items():
                    if (k.startswith("eval_") and isinstance(v, (int, float))
                            and not k.endswith(("seconds", "sequences", "examples", "features"))):
                        lower = k.endswith(("loss", "ppl"))
                        best = self.wandb_run.summary.get(f"best_{k}")
                        if best is None or (v < best if lower else v > best):
                            self.wandb_run.summary[f"best_{k}"] = v

    def end(self, step: int, status: str, **fields) -> None:
        """The run's last record: ``status`` finished | diverged | stopped | failed, and what the caller adds."""
        self._file.write(json.dumps({"step": step, "kind": "end", "status": status, **fields,
                                     "time": round(time.time(), 3)}) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.summary["status"] = status

    def log_checkpoints(self) -> list[tuple[str, list[str]]]:
        """With ``logging.wandb.log_checkpoints``: ``checkpoints/latest`` and ``checkpoints/best`` (one
        artifact with both aliases when they are the same step) as W&B artifacts of type ``model``, named
        ``<run name>-model`` with the aliases ``latest`` / ``best`` and ``step-N``. Returns (step-N, aliases)
        per artifact logged. A failure is a warning: the run's outcome is already decided."""
        if self.wandb_run is None or not self.cfg.logging.wandb.log_checkpoints:
            return []
        root = self.run_dir / "checkpoints"
        targets: dict[str, list[str]] = {}
        for alias in ("best", "latest"):   # latest last: W&B also gives "latest" to the newest version
            try:
                name = (root / alias).read_text().strip()
            except OSError:
                continue
            if name.startswith("step-") and (root / name).is_dir():
                targets.setdefault(name, []).append(alias)
        logged = []
        try:
            import wandb
            for name, aliases in targets.items():
                artifact = wandb.Artifact(f"{_artifact_name(self.run_dir.name)}-model", type="model",
                                          metadata={"step": int(name.split("-")[1]), "run_dir": str(self.run_dir)})
                artifact.add_dir(str(root / name))
                self.wandb_run.log_artifact(artifact, aliases=[*aliases, name])
                logged.append((name, aliases))
        except Exception as e:  # noqa: BLE001 - uploading is a courtesy; the checkpoints are on disk
            logger.warning("could not log the checkpoints to W&B: %s: %s", type(e).__name__, e)
        return logged

    def close(self, exit_code: int = 0) -> None:
        self._file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)


def _artifact_name(name: str) -> str:
    """W&B artifact names take letters, digits, dashes, underscores and dots."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"


def read_end(run_dir) -> dict | None:
    """A run's end record (``status`` finished | diverged | failed, and its ``error``), or None when the
    run never wrote one (killed, or not started)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "end":
            return record
    return None


class NullRunLog:
    """The run log of the processes other than rank 0: records are rank 0's to write."""

    count = 0

    def log(self, record: dict) -> None:
        pass

    def log_checkpoints(self) -> list:
        return []

    def end(self, step: int, status: str, **fields) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass
