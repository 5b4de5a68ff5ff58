"""A sweep agent: take the next run from the engine, execute it, stream its metric, stop it early when
hyperband says so, record how it ended; repeat until the sweep is done.

The engine is W&B's own (``sweeps.next_run`` / ``sweeps.stop_runs``); what W&B's server would hold is
the shared :class:`~groupbert.experiments.sweep.store.RunStore`. Hyperband's "iterations" are the records of
``metrics.jsonl`` that carry the sweep's metric, as W&B counts each ``wandb.log`` holding it.
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import time
import warnings

from groupbert.experiments.sweep.spec import OUR_PROGRAMS, RUN_CWD, Sweep, engine_config
from groupbert.experiments.sweep.store import ENGINE_STATE, RunStore, identity, last_step, read_history
from groupbert.training.run_log import read_end

logger = logging.getLogger("groupbert.experiments.sweep")


def _engine():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def to_engine_run(record: dict, metric: str):
    sweeps = _engine()
    hist = [{metric: h[metric]} for h in record.get("history", []) if _finite(h.get(metric))]
    summary = {metric: hist[-1][metric]} if hist else {}
    return sweeps.SweepRun(name=record["name"], state=sweeps.RunState(ENGINE_STATE[record["state"]]),
                           config={k: {"value": v} for k, v in record["params"].items()},
                           summaryMetrics=summary, sampledHistory=hist)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _plain(v):
    """numpy scalars from the engine -> Python numbers (JSON, command line)."""
    return v.item() if hasattr(v, "item") else v


def _die_with_parent():
    """Runs in the child before exec: a SIGKILLed agent takes its training run with it (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _owner() -> dict:
    """The claiming agent, by identity (PID, start time, boot id): a recycled PID is not mistaken for it."""
    me = identity(os.getpid())
    return {"pid": os.getpid(), "pid_start": me["start"], "boot_id": me["boot_id"], "child_pid": None,
            "child_start": None}


def claim_next(sweep: Sweep, store: RunStore) -> dict | None:
    """Under the lock: a preempted run to take up again, else the engine's next proposal; None when the
    sweep is done (grid exhausted or ``run_cap`` reached)."""
    sweeps = _engine()
    with store.locked():
        store.reclaim_dead()
        records = store.records()
        for r in records:
            if r["state"] == "preempted":
                r.update(state="running", restarts=r.get("restarts", 0) + 1, **_owner())
                store.write(r)
                return r
        cap = sweep.config.get("run_cap")
        if cap is not None and len(records) >= cap:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proposal = sweeps.next_run(engine_config(sweep.config), [to_engine_run(r, sweep.metric) for r in records],
                                       validate=False)
        if proposal is None:
            return None
        index = len(records)
        record = dict(index=index, name=f"run-{index:03d}",
                      params={k: _plain(v["value"]) for k, v in proposal.config.items()},
                      state="running", restarts=0, history=[], error=None, seconds=0.0, **_owner())
        store.write(record)
        return record


def should_stop(sweep: Sweep, store: RunStore, record: dict) -> bool:
    if "early_terminate" not in sweep.config:
        return False
    sweeps = _engine()
    with store.locked():
        records = [record if r["name"] == record["name"] else r for r in store.records()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stop = sweeps.stop_runs(engine_config(sweep.config), [to_engine_run(r, sweep.metric) for r in records],
                                    validate=False)
    return any(r.name == record["name"] for r in stop)


def execute(sweep: Sweep, store: RunStore, record: dict, python: str = sys.executable, poll: float = 1.0) -> dict:
    run_dir = store.run_dir(record["name"])
    argv = sweep.command(record["params"], python)
    if sweep.program.name in OUR_PROGRAMS and (run_dir / "config.yaml").exists():
        argv += ["--resume", str(run_dir)]  # a preempted run continues (or starts again if it saved nothing)
    else:
        argv += ["--output-dir", str(run_dir)]
    log_path = run_dir.parent / "log.txt"
    logger.info("%s: %s", record["name"], " ".join(f"{k}={v}" for k, v in record["params"].items()))
    t0 = time.perf_counter()
    stopped = False
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=RUN_CWD, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        record["child_pid"], record["child_start"] = proc.pid, identity(proc.pid)["start"]
        store.write(record)
        while proc.poll() is None:
            time.sleep(poll)
            history = read_history(run_dir, sweep.metric)
            if len(history) != len(record["history"]):
                record["history"] = history
                store.write(record)
                if should_stop(sweep, store, record):
                    logger.info("%s: stopped early by hyperband after %d values of %s", record["name"],
                                len(history), sweep.metric)
                    stopped = True
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    record["history"] = read_history(run_dir, sweep.metric)
    record["last_step"] = last_step(run_dir)
    record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - t0
    record["exit_code"] = proc.returncode
    tail = log_path.read_text().splitlines()[-15:]
    if stopped:
        record["state"] = "stopped"
    elif proc.returncode == 0:
        record["state"] = "finished"
    else:  # the run's end record says how it ended; a run killed before writing one failed
        end = read_end(run_dir)
        status = end["status"] if end is not None else None
        # SIGTERM (a scheduler's preemption) saved a checkpoint: the run is resumable, as if preempted
        record["state"] = {"diverged": "diverged", "stopped": "preempted"}.get(status, "failed")
        record["error"] = (end or {}).get("error") or "\n".join(tail)
        logger.warning("%s: %s (exit %d); see %s", record["name"], record["state"], proc.returncode, log_path)
    store.write(record)
    return record


def run_agent(sweep: Sweep, store: RunStore, poll: float = 1.0) -> int:
    """Execute runs until the sweep is done; returns how many this agent executed."""
    n = 0
    while (record := claim_next(sweep, store)) is not None:
        execute(sweep, store, record, poll=poll)
        n += 1
    return n
