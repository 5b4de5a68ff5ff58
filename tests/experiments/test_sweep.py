"""The local sweep engine: schema validation errors, runs through W&B's engine, failed and diverged
runs recorded, resume after the agents are killed, hyperband stopping, the report, and the
``--key=value`` arguments ``wandb agent`` passes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from groupbert import cli
from groupbert.experiments.sweep.__main__ import main as sweep_main
from groupbert.experiments.sweep.spec import SweepError, load_sweep

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_program.py")


def _write(tmp_path, **cfg) -> Path:
    base = {"program": str(FAKE), "method": "grid", "metric": {"name": "score", "goal": "minimize"},
            "command": ["${env}", "${interpreter}", "${program}", "${args}"]}
    base.update(cfg)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _records(sweep_dir: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in sweep_dir.glob("runs/*/record.json")), key=lambda r: r["index"])


# ---- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"method": "gird"}, "'gird' is not one of"),
    ({"parameters": {"x": {"distribution": "log_uniform_values", "min": 1.0}}}, "invalid hyperparameter configuration: x"),
    ({"parameters": {"x": {"min": 1.0, "max": 0.5}}}, "x: min 1.0 is not less than max 0.5"),
    ({"run_cap": 0}, "run_cap: 0"),
    ({"program": "missing.py"}, "key 'program': missing.py not found"),
    ({"command": ["${interpreter}", "${program}", "${args_json}"]}, "macros ['${args_json}']"),
])
def test_schema_errors_name_the_key(tmp_path, change, message):
    path = _write(tmp_path, parameters={"x": {"values": [1, 2]}}, **{k: v for k, v in change.items()
                                                                       if k != "parameters"})
    if "parameters" in change:
        cfg = yaml.safe_load(path.read_text())
        cfg["parameters"] = change["parameters"]
        path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SweepError, match=message.replace("[", r"\[").replace("$", r"\$")):
        load_sweep(path)
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())


def test_unknown_config_key_of_our_program_fails_before_any_run(tmp_path):
    path = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((ROOT / "configs/sweeps/pretrain_lr_grid.yaml").read_text())
    cfg["parameters"] = {"optimizer.lrr": {"values": [1e-3]}}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SweepError, match="parameter 'optimizer.lrr'.*lrr"):
        load_sweep(path)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs/sweeps").glob("*.yaml")))
def test_shipped_sweeps_validate(name):
    sweep = load_sweep(ROOT / "configs/sweeps" / f"{name}.yaml")
    argv = sweep.command({"optimizer.lr": 1e-4}, "python")
    assert argv[:2] == ["python", str(ROOT / sweep.config["program"])] and argv[-1] == "--optimizer.lr=0.0001"


# ---- runs ---------------------------------------------------------------------------------------
def test_grid_with_failed_and_diverged_runs_is_recorded_and_reported(tmp_path):
    path = _write(tmp_path, parameters={"x": {"values": [3.0, 1.0, 2.0]}, "mode": {"values": ["ok", "fail", "diverge"]}})
    sweep_dir = tmp_path / "s"
    assert sweep_main([str(path), "--sweep-dir", str(sweep_dir), "--agents", "2", "--poll", "0.05"]) == 0
    recs = _records(sweep_dir)
    assert len(recs) == 9 and len({json.dumps(r["params"], sort_keys=True) for r in recs}) == 9
    by_mode = {m: [r for r in recs if r["params"]["mode"] == m] for m in ("ok", "fail", "diverge")}
    assert {r["state"] for r in by_mode["ok"]} == {"finished"}
    assert {r["state"] for r in by_mode["fail"]} == {"failed"}
    assert all("no such corpus (fake)" in r["error"] and r["exit_code"] == 2 for r in by_mode["fail"])
    assert {r["state"] for r in by_mode["diverge"]} == {"diverged"}
    report = (sweep_dir / "results.md").read_text()
    best = next(line for line in report.splitlines() if line.startswith("| run-"))
    assert "| ok | 1 | 1.2 | finished |" in best  # x=1 after 4 steps: 1 + 1/5 (columns: mode, x)
    assert (sweep_dir / "plots" / "score_vs_x.png").exists() and (sweep_dir / "plots" / "best_run.png").exists()
    assert (sweep_dir / "results.csv").read_text().count("\n") == 10


def test_run_cap_and_random_search(tmp_path):
    path = _write(tmp_path, method="random", run_cap=3,
                  parameters={"x": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0}})
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s"), "--poll", "0.05"]) == 0
    recs = _records(tmp_path / "s")
    assert len(recs) == 3 and all(0.01 <= r["params"]["x"] <= 1.0 for r in recs)


def test_hyperband_stops_a_bad_run_early(tmp_path):
    # runs in grid order, one agent; x=5 is worse than the others at every logged value
    path = _write(tmp_path, parameters={"x": {"values": [1.0, 1.1, 1.2, 5.0]}, "steps": {"value": 8},
                                        "pause": {"value": 0.15}},
                  early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2})
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s"), "--poll", "0.05"]) == 0
    recs = {r["params"]["x"]: r for r in _records(tmp_path / "s")}
    assert recs[5.0]["state"] == "stopped" and len(recs[5.0]["history"]) < 8
    assert recs[1.0]["state"] == "finished" and len(recs[1.0]["history"]) == 8
    # the report counts what stopping saved: a full run is 8 steps, the stopped one ran fewer
    stopped = [r for r in recs.values() if r["state"] == "stopped"]
    ran = sum(r["last_step"] for r in recs.values())
    saved = sum(8 - r["last_step"] for r in stopped)
    report = (tmp_path / "s" / "results.md").read_text()
    assert f"Hyperband stopped {len(stopped)} of 4 runs early" in report
    assert f"a full run is 8 steps. The sweep ran {ran} optimizer steps instead of {ran + saved}" in report


def test_resume_after_the_agents_are_killed(tmp_path):
    path = _write(tmp_path, parameters={"x": {"values": [1.0, 2.0, 3.0, 4.0]}, "steps": {"value": 5},
                                        "pause": {"value": 0.15}})
    sweep_dir = tmp_path / "s"
    cmd = [sys.executable, "-m", "groupbert.experiments.sweep", str(path), "--sweep-dir", str(sweep_dir), "--poll", "0.05"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill while the second run is half way
        recs = _records(sweep_dir) if sweep_dir.exists() else []
        if len(recs) == 2 and len(recs[1].get("history", [])) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    recs = _records(sweep_dir)
    assert [r["state"] for r in recs] == ["finished", "running"]
    time.sleep(0.5)  # the killed agent's run dies with it (PR_SET_PDEATHSIG)
    assert sweep_main([str(path), "--sweep-dir", str(sweep_dir), "--poll", "0.05"]) == 0
    recs = _records(sweep_dir)
    assert [r["params"]["x"] for r in recs] == [1.0, 2.0, 3.0, 4.0]  # nothing run twice, nothing lost
    assert all(r["state"] == "finished" for r in recs)
    assert recs[1]["restarts"] == 1 and recs[0]["restarts"] == 0


def test_a_different_sweep_file_cannot_reuse_the_directory(tmp_path):
    path = _write(tmp_path, parameters={"x": {"values": [1.0]}})
    assert sweep_main([str(path), "--sweep-dir", str(tmp_path / "s"), "--poll", "0.05"]) == 0
    path2 = _write(tmp_path, parameters={"x": {"values": [2.0]}})
    assert sweep_main([str(path2), "--sweep-dir", str(tmp_path / "s")]) == 2


# ---- the programs take wandb agent's arguments ----------------------------------------------------
def test_dotted_arguments_are_config_overrides(tmp_path):
    seen = {}

    def job(cfg, output_dir, resume):
        seen["lr"], seen["steps"] = cfg.optimizer.lr, cfg.train.max_steps

    argv = ["--config", str(ROOT / "configs/groupbert/tiny_phase1.yaml"), "--optimizer.lr=0.25",
            "--train.max_steps=7", "--output-dir", str(tmp_path)]
    assert cli.main("test", job, argv) == 0
    assert seen == {"lr": 0.25, "steps": 7}
    assert cli.main("test", job, argv[:2] + ["--optimizer.lrr=0.25"]) == 2  # unknown key: exit 2
    with pytest.raises(SystemExit) as e:
        cli.main("test", job, argv[:2] + ["--bogus"])
    assert e.value.code == 2
