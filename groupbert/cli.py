"""Command-line plumbing shared by ``run_pretraining.py`` and ``run_squad.py``.

Options: ``--config FILE``, ``--set key=value`` (repeatable; ``--key=value`` with a dotted key, as
``wandb agent`` passes sweep parameters, is the same), ``--output-dir DIR``, ``--backend B``,
``--resume DIR``. Exit codes: 0 success, 2 bad configuration or input (the message names the key or
file), 1 anything else.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from groupbert.config import ConfigError, RunConfig, load_config

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--output-dir", type=Path, help="run directory (default: runs/<config dir>_<config name>)")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda", "ipu", "ipu-model"),
                   help="shorthand for --set runtime.backend=...")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (its config.yaml is used "
                        "unless --config is given; --set still applies)")
    p.add_argument("--quiet", action="store_true", help="log warnings only, no progress bar")
    return p


def resolve_run(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"runtime.backend={args.backend}")
    if args.quiet:
        overrides.append("logging.progress_bar=false")
    config_path = args.config
    if args.resume is not None:
        if args.output_dir is not None and args.output_dir.resolve() != args.resume.resolve():
            raise ConfigError("--resume and --output-dir name different directories; --resume continues "
                              "the run in place")
        if config_path is None:
            config_path = args.resume / "config.yaml"
            if not config_path.exists():
                raise ConfigError(f"{args.resume} has no config.yaml: is it a run directory?")
        output_dir = args.resume
    else:
        if config_path is None:
            raise ConfigError("give --config FILE (or --resume RUN_DIR)")
        output_dir = args.output_dir or Path("runs") / f"{config_path.resolve().parent.name}_{config_path.stem}"
    cfg = load_config(config_path, overrides)
    return cfg, output_dir


def main(description: str, job: Callable[[RunConfig, Path, bool], dict], argv: list[str] | None = None) -> int:
    parser = build_parser(description)
    args, extra = parser.parse_known_args(argv)
    args.overrides += _dotted_overrides(parser, extra)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("groupbert")
    bad_input = _bad_input_errors()
    try:
        cfg, output_dir = resolve_run(args)
        job(cfg, output_dir, args.resume is not None)
    except bad_input as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; the latest complete checkpoint is intact (continue with --resume)", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - mapped to exit code 1 with the traceback in the log
        log.exception("failed: %s", e)
        return EXIT_ERROR
    return EXIT_OK


def _dotted_overrides(parser: argparse.ArgumentParser, extra: list[str]) -> list[str]:
    """``--section.key=value`` (how ``wandb agent`` passes a sweep's parameters) as ``--set section.key=value``;
    any other unknown argument is the usual argparse error."""
    out = []
    for arg in extra:
        if arg.startswith("--") and "=" in arg and "." in arg.split("=", 1)[0]:
            out.append(arg[2:])
        else:
            parser.error(f"unrecognized argument: {arg}")
    return out


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "fix the configuration or the input" (exit code 2)."""
    from custom_ops import CustomOpsError  # runtime.custom_ops: on, and the C++ kernels could not be built
    from groupbert.data import DataError
    from groupbert.ipu.emulator.errors import OutOfMemoryError  # a model that does not fit its IPUs
    from groupbert.ipu.planner import IPUOutOfMemoryError
    from groupbert.training.checkpoint import CheckpointError
    return (ConfigError, DataError, CheckpointError, OutOfMemoryError, IPUOutOfMemoryError, CustomOpsError)
