"""Loading and validating a sweep file (W&B's schema, https://docs.wandb.ai/models/sweeps/sweep-config-keys).

Checked before any run starts, each error naming the key: the schema itself (the ``sweeps`` package's
JSON schema: method, metric, parameters, early_terminate, run_cap, ...); ``program`` exists; the
``command`` uses only macros we expand. For our two programs, also what would otherwise fail every run
(or leave every run without a metric): the run's whole command line, fixed ``--set``s and every
parameter at values the sweep can propose, goes through the program's own argument parser and
``load_config`` (so ``optimizer.lrr`` fails here, not in run 7), and ``metric.name`` must be a key the
program's records carry (read from the task and engine code). Foreign programs cannot be checked.
"""
from __future__ import annotations

import ast
import difflib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import yaml

logger = logging.getLogger("groupbert.experiments.sweep")

REPO = Path(__file__).resolve().parents[3]
# Where runs start: the checkout (a clone or an editable install: its .cache/ is shared); an installed wheel
# has no checkout, and its runs start in the agent's working directory (None), never in site-packages.
RUN_CWD = REPO if (REPO / "pyproject.toml").is_file() else None
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


def load_sweep(path: str | Path, check_program: bool = True) -> Sweep:
    """The sweep in ``path``, checked; ``check_program=False`` skips the checks against our program's config
    and records (the agent processes: their parent has just made them on the same file)."""
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
    if not check_program:
        return sweep
    if program.name in OUR_PROGRAMS:
        _check_metric(sweep)
        _check_overrides(sweep)
    else:
        logger.info("%s is not one of our programs (%s): its arguments and metric '%s' cannot be checked "
                    "before the runs", program.name, ", ".join(OUR_PROGRAMS), sweep.metric)
    return sweep


# ---- the run's command line, as the program will parse it ------------------------------------------
VALUE_RANGE = {None, "uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
               "inv_log_uniform_values"}  # distributions whose min/max are values a run can get


def _samples(sweep: Sweep) -> list[dict]:
    """Parameter sets to try: one proposal of W&B's engine (so values have the types runs get: int_uniform
    ints, uniform floats), then each listed value and each range end in turn."""
    params = sweep.config["parameters"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sweeps import next_run
            proposal = next_run({"method": "random", "parameters": params}, [], validate=False)
        base = {k: v["value"].item() if hasattr(v["value"], "item") else v["value"]
                for k, v in proposal.config.items()}
    except Exception:  # noqa: BLE001 - the engine's own errors come when the agents ask it; check what we can
        base = {k: spec.get("value", (spec.get("values") or [spec.get("min")])[0]) for k, spec in params.items()}
    out = [base]
    for name, spec in params.items():
        others = list(spec.get("values", []))
        if spec.get("distribution") in VALUE_RANGE and "min" in spec and "max" in spec:
            others += [spec["min"], spec["max"]]
        out += [{**base, name: v} for v in others if v != base.get(name)]
    return out


def _check_overrides(sweep: Sweep) -> None:
    """Parse each run's argv (the ``command`` with the parameters expanded) with the program's own parser,
    then ``load_config`` it as the run would (cwd: the repository); an error names the parameter, or
    ``command`` for its fixed arguments, and the file."""
    import groupbert.cli as cli
    from groupbert.config import ConfigError, find_config

    params = sweep.config["parameters"]

    def refuse(message: str) -> NoReturn:
        where = next((f"parameter '{k}'" for k in params if f"--{k}=" in message or f" {k}=" in message),
                     "key 'command'")
        raise SweepError(f"{sweep.path}: {where}: {sweep.program.name} would refuse it: {message}")

    for values in _samples(sweep):
        argv = sweep.command(values, "python")
        program = [i for i, t in enumerate(argv) if Path(t).name == sweep.program.name]
        argv = argv[program[0] + 1:] if program else argv[1:]
        parser = cli.build_parser(sweep.program.name)
        parser.error = refuse  # argparse's error exits; ours names the sweep file
        args, extra = parser.parse_known_args(argv + ["--output-dir", "run"])
        args.overrides += cli._dotted_overrides(parser, extra)
        if args.config is None:
            refuse("it must give --config FILE")
        if not args.config.is_absolute():  # runs start in the repository (a wheel: its recipes' copy)
            args.config = find_config(args.config, REPO)
        try:
            cli.resolve_run(args)
        except ConfigError as e:
            if e.key in params:
                raise SweepError(f"{sweep.path}: parameter '{e.key}' (value {_fmt(values[e.key])}): {e}") from None
            refuse(str(e))


# ---- the metric ----------------------------------------------------------------------------------
RECORD_MODULES = ("groupbert.tasks", "groupbert.training", "optimizers.update_metrics")
BOOKKEEPING = {"step", "kind", "time", "status", "error"}


def logged_keys(program: Path) -> tuple[set[str], set[str]]:
    """The record keys ``program`` can log, read from the code: the string keys (and f-string prefixes, such
    as ``update_norm/``) of dict literals and ``x["key"] = ...`` in the modules of ``RECORD_MODULES`` it
    imports, directly or through each other. A superset (it holds checkpoint fields too): a name outside it
    cannot be a record key."""
    keys, prefixes, seen = set(), set(), set()
    todo = [Path(program)]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Dict):
                found = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                found = [node.slice]
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "level", 0) == 0:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                todo += [_module_file(m) for m in names if m and m.startswith(RECORD_MODULES)]
            for k in found:
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    keys.add(k.value)
                elif isinstance(k, ast.JoinedStr) and k.values and isinstance(k.values[0], ast.Constant):
                    prefixes.add(k.values[0].value)
    return keys - BOOKKEEPING, {p for p in prefixes if p}


def _module_file(module: str) -> Path:
    base = REPO / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def suggest(name: str, names) -> str:
    """`` (did you mean 'x'?)`` with difflib's closest name, or nothing."""
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_metric(sweep: Sweep) -> None:
    keys, prefixes = logged_keys(sweep.program)
    name = sweep.metric
    if name in keys or name.startswith(tuple(prefixes)):
        return
    evals = sorted(k for k in keys if k.startswith("eval_"))
    raise SweepError(f"{sweep.path}: key 'metric.name': no record of {sweep.program.name} carries '{name}'"
                     f"{suggest(name, keys)}; its evaluation records carry {', '.join(evals)}, its train "
                     f"records 'loss' and the task's other sums (groupbert/tasks/)")
