"""The W&B side of the shipped sweep files, without a W&B server: each file passes W&B's own checks
(the ``sweeps`` package's full ``SweepConfig`` validation, the engine proposing a run with
``validate=True``, hyperband's bands), and the command line that ``wandb agent`` itself builds for a
proposed run (``wandb.wandb_agent.Agent._command_run``, with the process launch replaced by a recorder)
is accepted by the program's own entry point and sets every swept value in the run's config."""
import json
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from groupbert.experiments.sweep.agent import _plain

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
# a documented W&B key (https://docs.wandb.ai/models/sweeps/sweep-config-keys) that the pinned engine,
# sweeps 0.2.0, predates; W&B's server takes it, and our agents enforce it
NEWER_THAN_ENGINE = "Additional properties are not allowed ('run_cap' was unexpected)"


def _sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_file_passes_wandb_validation(path):
    sweeps = _sweeps()
    config = yaml.safe_load(path.read_text())
    violations = sweeps.schema_violations_from_proposed_config(config)
    assert violations == ([NEWER_THAN_ENGINE] if "run_cap" in config else [])
    engine = {k: v for k, v in config.items() if k != "run_cap"}
    filled = sweeps.SweepConfig(engine)  # raises on any schema error; fills W&B's defaults
    assert filled["metric"]["name"] == config["metric"]["name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = sweeps.next_run(engine, [], validate=True)
        assert set(run.config) == set(config["parameters"])
        if "early_terminate" in config:
            assert config["early_terminate"]["type"] == "hyperband"
            assert sweeps.stop_runs(engine, [], validate=True) == []  # bands computable from the file


class _Recorder:
    """Stands in for ``wandb.wandb_agent.AgentProcess``: keeps the command instead of starting it."""
    commands = []

    def __init__(self, command=None, env=None, **kwargs):
        type(self).commands.append(command)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_wandb_agent_command_line_is_accepted(path, tmp_path, monkeypatch):
    sweeps = _sweeps()
    from wandb import wandb_agent

    config = yaml.safe_load(path.read_text())
    engine = {k: v for k, v in config.items() if k != "run_cap"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proposal = sweeps.next_run(engine, [], validate=True)
    # the server hands the agent the proposal as JSON
    values = json.loads(json.dumps({k: _plain(v["value"]) for k, v in proposal.config.items()}))

    for var in ("WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.setenv(var, str(tmp_path) if var == "WANDB_DIR" else "placeholder")  # restored afterwards
    monkeypatch.setattr(wandb_agent, "AgentProcess", _Recorder)
    _Recorder.commands = []
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id="abc123")
    agent._sweep_command = list(config["command"])  # what Agent.run reads from the sweep's config
    agent._command_run({"type": "run", "run_id": "r1", "program": config["program"],
                        "args": {k: {"value": v} for k, v in values.items()}})
    (argv,) = _Recorder.commands
    assert argv[:3] == ["/usr/bin/env", "python", config["program"]]
    assert argv[-len(values):] == [f"--{k}={v}" for k, v in values.items()]  # ${args}: --key=value

    seen = {}

    def capture(cfg, output_dir, resume):
        seen["cfg"] = cfg
        return {}

    if config["program"] == "run_pretraining.py":
        import groupbert.tasks.pretraining as target
        monkeypatch.setattr(target, "pretrain", capture)
    else:
        import groupbert.tasks.squad as target
        monkeypatch.setattr(target, "finetune", capture)
    monkeypatch.chdir(ROOT)  # wandb agent is started in the repository root
    monkeypatch.setattr(sys, "argv", argv[2:] + ["--output-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / config["program"]), run_name="__main__")
    assert done.value.code == 0
    cfg = seen["cfg"]
    for key, value in values.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == pytest.approx(value), key
    assert cfg.runtime.threads == 1 and cfg.logging.progress_bar is False  # the file's fixed arguments too
