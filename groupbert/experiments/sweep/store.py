"""The sweep's on-disk run store, shared by every agent process on the machine.

Layout of ``SWEEP_DIR``: ``sweep.yaml`` (a copy of the file the sweep was started with; a later start
with a different file is an error), ``runs/<name>/record.json`` (params, state, pid, error, metric
history; written atomically) and ``runs/<name>/run/`` (the training run's own directory). Every
read-propose-write cycle holds an exclusive ``fcntl`` lock on ``SWEEP_DIR/lock``, so two agents never
propose from the same state. A record left ``running`` by a process that no longer exists (an agent
killed with its run) is ``preempted``: the next agent takes it up again with the same parameters,
resuming from the run's last checkpoint.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
from pathlib import Path

# our state -> the sweeps engine's RunState name
ENGINE_STATE = {"running": "running", "finished": "finished", "stopped": "killed", "failed": "failed",
                "diverged": "failed", "preempted": "preempted"}


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self):
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def records(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "runs").glob("*/record.json")):
            out.append(json.loads(p.read_text()))
        return sorted(out, key=lambda r: r["index"])

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name / "run"

    def write(self, record: dict) -> None:
        path = self.root / "runs" / record["name"] / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=float))
        os.replace(tmp, path)

    def reclaim_dead(self) -> None:
        """Mark runs whose process is gone as preempted (call with the lock held)."""
        for r in self.records():
            if r["state"] == "running" and not _alive(r.get("pid")):
                if _alive(r.get("child_pid")):  # its training process outlived it: stop that first
                    os.kill(r["child_pid"], signal.SIGKILL)
                r["state"] = "preempted"
                self.write(r)


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its dead parent) is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def last_step(run_dir: Path) -> int | None:
    """The highest ``step`` of any record in the run's ``metrics.jsonl``: how far a run got (train records come
    every ``logging.log_every`` steps, so a run stopped between two records counts up to the earlier one)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    steps = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(step, int):
            steps.append(step)
    return max(steps) if steps else None


def read_history(run_dir: Path, metric: str) -> list[dict]:
    """The records of ``metrics.jsonl`` that carry ``metric``, in order (a line cut by a crash is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if metric in rec:
            v = rec[metric]
            out.append({"step": rec.get("step"), metric: math.nan if v is None else v})
    return out
