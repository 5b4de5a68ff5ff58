"""Loading and validating a sweep file (W&B's schema, https://docs.wandb.ai/models/sweeps/sweep-config-keys).

Checked before any run starts, each error naming the key: the schema itself (the ``sweeps`` package's
JSON schema: method, metric, parameters, early_terminate, run_cap, ...); ``program`` exists; for our two
programs, every parameter is a valid ``--set`` override of the base config (so ``optimizer.lrr`` fails
here, not in run 7); and the ``command`` uses only macros we expand.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from groupbert.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]
OUR_PROGRAMS = ("run_pretraining.py", "run_squad.py")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
MACROS = {"${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}"}


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file and the key."""


@dataclass
class Sweep:
    path: Path
    config: dict                      # the sweep file as W&B reads it
    program: Path
    base_args: list[str] = field(default_factory=list)  # command tokens that are not macros (e.g. --config F)

    @property
    def metric(self) -> str:
        return self.config["metric"]["name"]

    @property
    def maximize(self) -> bool:
        return self.config["metric"].get("goal", "minimize") == "maximize"

    def command(self, params: dict, python: str) -> list[str]:
        """The run's argv: the file's ``command`` with its macros expanded as ``wandb agent`` does."""
        out = []
        for tok in self.config.get("command", DEFAULT_COMMAND):
            if tok == "${env}":
                continue
            elif tok == "${interpreter}":
                out.append(python)
            elif tok == "${program}":
                out.append(str(self.program))
            elif tok == "${args}":
                out += [f"--{k}={_fmt(v)}" for k, v in params.items()]
            elif tok == "${args_no_hyphens}":
                out += [f"{k}={_fmt(v)}" for k, v in params.items()]
            else:
                out.append(tok)
        return out


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(float(v))
    return str(v)


# sweeps 0.2.0 declares pydantic-v1 config keys; pydantic 2 warns about them on import
warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")


def engine_config(config: dict) -> dict:
    """The file without ``run_cap``: newer than the engine's schema (sweeps 0.2.0); enforced by the agents."""
    return {k: v for k, v in config.items() if k != "run_cap"}


def _violations(config: dict) -> list[str]:
    from sweeps import schema_violations_from_proposed_config
    problems = list(dict.fromkeys(schema_violations_from_proposed_config(engine_config(config))))
    cap = config.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        problems.append(f"run_cap: {cap!r} is not an integer >= 1")
    return problems


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (method, metric, parameters, ...)")
    problems = _violations(config)
    if problems:
        raise SweepError(f"{path}: " + "; ".join(problems))
    if "metric" not in config:
        raise SweepError(f"{path}: key 'metric' is required here (the metric the runs log, and its goal)")
    if "program" not in config:
        raise SweepError(f"{path}: key 'program' is required (run_pretraining.py or run_squad.py)")
    program = Path(config["program"])
    if not program.is_absolute():
        program = (path.parent / program) if (path.parent / program).exists() else REPO / program
    if not program.is_file():
        raise SweepError(f"{path}: key 'program': {config['program']} not found")
    command = config.get("command", DEFAULT_COMMAND)
    unknown = [t for t in command if t.startswith("${") and t not in MACROS]
    if unknown:
        raise SweepError(f"{path}: key 'command': macros {unknown} are not supported (use {sorted(MACROS)})")
    if "${args}" not in command and "${args_no_hyphens}" not in command:
        raise SweepError(f"{path}: key 'command' never passes the parameters (${{args}})")
    base_args = [t for t in command if not t.startswith("${")]
    sweep = Sweep(path, config, program, base_args)
    if program.name in OUR_PROGRAMS:
        _check_overrides(sweep)
    return sweep


def _check_overrides(sweep: Sweep) -> None:
    """Every parameter must be a key of our config: load the base config with each parameter set to a
    value it can take (validation of ranges is the config's, at that value)."""
    args = sweep.base_args
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        raise SweepError(f"{sweep.path}: key 'command' must give --config FILE for {sweep.program.name}")
    base = Path(args[args.index("--config") + 1])
    base = base if base.is_absolute() or base.exists() else REPO / base
    for name, spec in sweep.config["parameters"].items():
        if "value" in spec:
            value = spec["value"]
        elif "values" in spec:
            value = spec["values"][0]
        else:
            value = spec.get("min")
        try:
            load_config(base, [f"{name}={_fmt(value)}"])
        except ConfigError as e:
            raise SweepError(f"{sweep.path}: parameter '{name}': {e}") from None
