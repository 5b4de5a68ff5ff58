"""The run's records: ``metrics.jsonl`` (one JSON object per line) and Weights & Biases.

Every record has ``step``, ``kind`` (``run`` | ``train`` | ``eval`` | ``update`` | ``end``) and ``time`` (Unix
seconds when it was written). A run's last record is ``{"kind": "end", "status": "finished" | "diverged" |
"failed", ...}``: sweeps and studies read how a run ended from it. W&B runs offline by default
(``wandb sync`` uploads later); ``WANDB_MODE`` in the environment wins over ``logging.wandb.mode``. On
resume, records past the checkpoint's step (and the interrupted run's end record) are dropped from
``metrics.jsonl`` so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from groupbert.config import RunConfig

logger = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, cfg: RunConfig, run_id: str, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = open(self.path, "a")
        self.wandb_run = None
        mode = os.environ.get("WANDB_MODE", cfg.logging.wandb.mode)
        if mode != "disabled":
            self.wandb_run = self._init_wandb(run_dir, cfg, run_id, mode)

    @staticmethod
    def _init_wandb(run_dir: Path, cfg: RunConfig, run_id: str, mode: str):
        import wandb
        w = cfg.logging.wandb
        config = cfg.to_dict()
        config["derived"] = cfg.derived()
        tags = list(w.tags or []) + [f"model:{cfg.model.type}", f"optimizer:{cfg.optimizer.name}",
                                     f"backend:{cfg.runtime.backend}", f"seq:{cfg.data.seq_len}"]
        # Under `wandb agent` the run id and the sweep come from the agent's environment (WANDB_RUN_ID,
        # WANDB_SWEEP_ID); our own id would detach the run from its sweep.
        run_id = None if os.environ.get("WANDB_SWEEP_ID") else run_id
        return wandb.init(project=w.project, entity=w.entity, name=w.name or Path(run_dir).name,
                          tags=tags, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
                          config=config, allow_val_change=True)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if rec.get("step", 0) <= step and rec.get("kind") != "end":
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        record.setdefault("time", round(time.time(), 3))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
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
        """The run's last record: ``status`` finished | diverged | failed, and what the caller adds."""
        self._file.write(json.dumps({"step": step, "kind": "end", "status": status, **fields,
                                     "time": round(time.time(), 3)}) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.summary["status"] = status

    def close(self, exit_code: int = 0) -> None:
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)


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

    def log(self, record: dict) -> None:
        pass

    def end(self, step: int, status: str, **fields) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass
