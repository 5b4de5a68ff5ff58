"""Faults of the sweep runner, each ending in a defined state: a stale record (its PID reused by an unrelated
process, or written before a reboot) is reclaimed as preempted and nothing is signalled; a misspelled
``metric.name``, a bad override in ``command`` or a mistyped option is refused with exit 2 naming the cause,
before any run; a sweep whose runs all fail exits 1 and says where the logs are."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from groupbert.experiments.sweep.__main__ import main as sweep_main
from groupbert.experiments.sweep.__main__ import parse_args
from groupbert.experiments.sweep.store import RunStore, boot_id, start_time

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identity reads /proc (Linux)")

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests" / "experiments" / "fake_program.py"
TINY = "configs/groupbert/tiny_phase1.yaml"


@pytest.fixture
def sleeper():
    """An unrelated live process whose PID a stale record may name."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def _record(store: RunStore, **fields) -> dict:
    record = dict(index=0, name="run-000", params={"x": 1.0}, state="running", restarts=0, history=[],
                  error=None, seconds=0.0, **fields)
    store.write(record)
    return record


def _state(store: RunStore) -> str:
    return store.records()[0]["state"]


# ---- process identity ------------------------------------------------------------------------------
@pytest.mark.parametrize("stale", ["start time", "boot id"])
def test_a_recycled_pid_is_preempted_and_not_killed(tmp_path, sleeper, stale):
    """The record's agent and child PIDs now name the unrelated ``sleep``: the run is dead, the sleep lives."""
    start, boot = start_time(sleeper.pid), boot_id()
    if stale == "start time":
        start += 1
    else:
        boot = "00000000-0000-0000-0000-000000000000"
    store = RunStore(tmp_path)
    _record(store, pid=sleeper.pid, pid_start=start, boot_id=boot, child_pid=sleeper.pid, child_start=start)
    store.reclaim_dead()
    assert _state(store) == "preempted"
    time.sleep(0.05)
    assert sleeper.poll() is None


def test_a_dead_pid_is_preempted(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    store = RunStore(tmp_path)
    _record(store, pid=gone.pid, pid_start=12345, boot_id=boot_id(), child_pid=None, child_start=None)
    store.reclaim_dead()
    assert _state(store) == "preempted"


def test_the_live_process_itself_is_left_running(tmp_path, sleeper):
    store = RunStore(tmp_path)
    _record(store, pid=sleeper.pid, pid_start=start_time(sleeper.pid), boot_id=boot_id(), child_pid=None,
            child_start=None)
    store.reclaim_dead()
    assert _state(store) == "running" and sleeper.poll() is None


def test_a_matching_orphaned_training_process_is_killed(tmp_path, sleeper):
    """The agent is gone and its child is still the recorded process: it is stopped before the run is taken up."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    store = RunStore(tmp_path)
    _record(store, pid=gone.pid, pid_start=12345, boot_id=boot_id(), child_pid=sleeper.pid,
            child_start=start_time(sleeper.pid))
    store.reclaim_dead()
    assert _state(store) == "preempted" and sleeper.wait(timeout=5) == -9


def test_older_records_are_read_conservatively(tmp_path, sleeper, caplog):
    """Records with bare PIDs (the older format): a live PID keeps the run unless its process started after the
    record was last written (then it cannot be the writer or its child); a bare ``child_pid`` that may be the
    run's is never killed, and the log says it was left alone."""
    store = RunStore(tmp_path)
    path = tmp_path / "runs" / "run-000" / "record.json"
    past = time.time() - 60
    _record(store, pid=sleeper.pid)  # written after the sleep started: it may be the agent
    store.reclaim_dead()
    assert _state(store) == "running"
    os.utime(path, (past, past))  # the sleep started after the record was last written: not its agent
    store.reclaim_dead()
    assert _state(store) == "preempted"

    gone = subprocess.Popen(["true"])
    gone.wait()
    _record(store, pid=gone.pid, child_pid=sleeper.pid)
    with caplog.at_level(logging.WARNING, logger="groupbert.experiments.sweep"):
        store.reclaim_dead()
    assert _state(store) == "running" and f"process {sleeper.pid} may still be its training run" in caplog.text
    os.utime(path, (past, past))
    store.reclaim_dead()
    assert _state(store) == "preempted"
    time.sleep(0.05)
    assert sleeper.poll() is None


# ---- refused before any run ------------------------------------------------------------------------
def _sweep(tmp_path: Path, program: str, metric: str, command: list[str], parameters: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"program": program, "method": "grid", "parameters": parameters,
                                    "metric": {"name": metric, "goal": "minimize"}, "command": command}))
    return path


def _no_runs(sweep_dir: Path) -> bool:
    return not (sweep_dir / "runs").exists() or not any((sweep_dir / "runs").iterdir())


def test_a_misspelled_metric_of_our_program_is_refused_with_a_suggestion(tmp_path, capsys):
    path = _sweep(tmp_path, "run_pretraining.py", "eval_los",
                  ["${env}", "${interpreter}", "${program}", "--config", TINY, "${args}"],
                  {"optimizer.lr": {"values": [1e-3]}})
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "key 'metric.name'" in err and "did you mean 'eval_loss'?" in err and str(path) in err
    assert _no_runs(tmp_path / "s")


@pytest.mark.parametrize("tokens,named", [
    (["--set", "train.max_stepz=5"], "train.max_stepz"),
    (["--quite"], "--quite"),
])
def test_a_bad_fixed_argument_in_command_is_refused_before_any_run(tmp_path, capsys, tokens, named):
    path = _sweep(tmp_path, "run_pretraining.py", "eval_loss",
                  ["${env}", "${interpreter}", "${program}", "--config", TINY, *tokens, "${args}"],
                  {"optimizer.lr": {"values": [1e-3]}})
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "key 'command'" in err and named in err and str(path) in err
    assert _no_runs(tmp_path / "s")


def test_agent_is_not_an_abbreviation_of_agents(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["sweep.yaml", "--agent", "2"])
    assert e.value.code == 2 and "did you mean --agents?" in capsys.readouterr().err


# ---- judged after the runs ---------------------------------------------------------------------------
def test_a_metric_no_run_logged_exits_2_naming_what_they_logged(tmp_path, capsys):
    """A foreign program cannot be checked up front: after its runs, the names they did log and the closest."""
    path = _sweep(tmp_path, str(FAKE), "scor", ["${env}", "${interpreter}", "${program}", "${args}"],
                  {"x": {"values": [1.0]}, "steps": {"value": 1}})
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s"), "--poll", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "no run logged 'scor'" in err and "did you mean 'score'?" in err and "the runs logged: score" in err


def test_every_run_failing_exits_1_saying_where_the_logs_are(tmp_path, capsys):
    path = _sweep(tmp_path, str(FAKE), "score", ["${env}", "${interpreter}", "${program}", "${args}"],
                  {"mode": {"values": ["fail", "diverge"]}})
    sweep_dir = tmp_path / "s"
    assert sweep_main([str(path), "--sweep-dir", str(sweep_dir), "--poll", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "every run (2) failed or diverged" in err and f"{sweep_dir}/runs/<run>/log.txt" in err
    states = sorted(json.loads(p.read_text())["state"] for p in sweep_dir.glob("runs/*/record.json"))
    assert states == ["diverged", "failed"]
