"""The sweep's on-disk run store, shared by every agent process on the machine.

Layout of ``SWEEP_DIR``: ``sweep.yaml`` (a copy of the file the sweep was started with; a later start
with a different file is an error), ``runs/<name>/record.json`` (params, state, pid, error, metric
history; written atomically) and ``runs/<name>/run/`` (the training run's own directory). Every
read-propose-write cycle holds an exclusive ``fcntl`` lock on ``SWEEP_DIR/lock``, so two agents never
propose from the same state. A record left ``running`` by a process that no longer exists (an agent
killed with its run) is ``preempted``: the next agent takes it up again with the same parameters,
resuming from the run's last checkpoint.

A process is named by its identity, not its bare PID: the record keeps each PID's start time (field 22
of ``/proc/PID/stat``, clock ticks since boot) and the machine's boot id, because after a reboot, or
once a PID is recycled, the same number names an unrelated process. Such a process is not the run's,
so the run counts as dead and nothing is signalled; only a child whose identity matches is killed.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
from pathlib import Path

logger = logging.getLogger("groupbert.experiments.sweep")

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
        """Mark runs whose agent is gone as preempted (call with the lock held). A training process that
        outlived its agent is killed only when its recorded identity matches: never a recycled PID."""
        for r in self.records():
            if r["state"] != "running":
                continue
            mtime = (self.root / "runs" / r["name"] / "record.json").stat().st_mtime
            if is_alive(r.get("pid"), r.get("pid_start"), r.get("boot_id"), written=mtime):
                continue
            child, boot = r.get("child_pid"), r.get("boot_id")
            if child and r.get("child_start") is None and is_alive(child, None, boot, written=mtime):
                # the older format: this may be the run's training process, or a recycled PID; killing it could
                # hit a stranger, taking the run up again could put two trainers on one run directory
                logger.warning("%s: its agent is gone, but process %d may still be its training run (the record "
                               "has no start time to tell); left alone, and the run stays running until it exits",
                               r["name"], child)
                continue
            if child and r.get("child_start") is not None:
                kill_if_same(child, r["child_start"], boot, r["name"])
            r["state"] = "preempted"
            self.write(r)


def kill_if_same(pid: int, start: int, boot: str | None, name: str) -> bool:
    """SIGKILL ``pid`` only if it is still the recorded process. Through a pidfd where there is one: opened
    first, then checked, so the PID cannot be recycled between the check and the signal."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # gone, or no pidfd (old kernel, not Linux): check, then signal
        fd = None
    try:
        if not is_alive(pid, start, boot):
            return False
        logger.warning("%s: its agent is gone; killing its training process %d", name, pid)
        with contextlib.suppress(ProcessLookupError):
            if fd is not None:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        return True
    finally:
        if fd is not None:
            os.close(fd)


BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot's id (Linux), or None where there is none to read."""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from ``/proc/PID/stat``, None if it has no
    entry. The command name (field 2) may hold spaces and parentheses, so fields are counted from its last ')'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])  # fields 3 and 22


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when it is gone or unreadable."""
    stat = _stat(pid)
    return stat[1] if stat else None


def identity(pid: int) -> dict:
    """What a record stores next to a PID so that a later reader can tell this process from a PID reuse."""
    return {"start": start_time(pid), "boot_id": boot_id()}


def is_alive(pid, start: int | None = None, boot: str | None = None, written: float | None = None) -> bool:
    """Whether ``pid`` is still the recorded process: it exists, is not a zombie, and (when recorded) the boot
    id and start time match. Older records have no start time: then a live PID counts, unless the process
    started after ``written`` (the record's mtime), as the process that wrote the record cannot have."""
    if not pid:
        return False
    if boot is not None and boot != boot_id():
        return False  # written before a reboot: whatever has this PID now is another process
    stat = _stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False  # Linux: no /proc entry, no process
        return _signal0(pid)  # no /proc to read: the bare PID is all there is
    state, started = stat
    if state == "Z":  # exited, not yet reaped by its (dead) parent
        return False
    if start is not None:
        return started == start
    if written is not None and _started_at(started) > written + 2.0:  # 2 s: btime is whole seconds
        return False
    return True


def _signal0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_at(ticks: int) -> float:
    """A start time in ticks since boot as Unix seconds (``btime`` of ``/proc/stat`` + ticks / CLK_TCK)."""
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return -math.inf
    return btime + ticks / os.sysconf("SC_CLK_TCK")


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
