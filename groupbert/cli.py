"""Command-line plumbing shared by ``run_pretraining.py`` and ``run_squad.py``.

Options: ``--config FILE``, ``--set key=value`` (repeatable; ``--key=value`` with a dotted key, as
``wandb agent`` passes sweep parameters, is the same), ``--output-dir DIR``, ``--backend B``,
``--resume DIR``, ``--eval-only CHECKPOINT``. Exit codes: 0 success, 2 bad configuration or input
(:class:`groupbert.errors.BadInput`: the message names the key or file), 143 stopped by SIGTERM after saving
a checkpoint (continue with ``--resume``), 1 anything else.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from groupbert.config import ConfigError, RunConfig, load_config
from groupbert.errors import BadInput

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(  # no abbreviations: "--eval X" must not quietly mean --eval-only X
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        epilog="Any --section.key=value is --set section.key=value (as wandb agent passes it). Keys, defaults and "
               "units: groupbert/config.py. Exit codes: 0 done; 2 bad configuration or input, naming the key "
               "or file; 143 stopped by SIGTERM with a checkpoint saved (continue with --resume); 1 anything "
               "else (a diverged run included).")
    p.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--output-dir", type=Path, help="run directory (default: runs/<config dir>_<config name>)")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda", "ipu", "ipu-model"),
                   help="shorthand for --set runtime.backend=...")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (or start it again if it "
                        "stopped before its first), with its config.yaml; settings that change what a step does "
                        "cannot change on resume (refused, exit 2)")
    p.add_argument("--eval-only", type=Path, metavar="CHECKPOINT",
                   help="evaluate a run (its latest checkpoint), a checkpoints/step-N directory or "
                        "checkpoints/best, and write the results into --output-dir (default: "
                        "<run>/eval-step-N); its config.yaml is used unless --config is given")
    p.add_argument("--quiet", action="store_true", help="log warnings only, no progress bar")
    return p


def resolve_run(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"runtime.backend={args.backend}")
    if args.quiet:
        overrides.append("logging.progress_bar=false")
    config_path = args.config
    if args.resume is not None and args.eval_only is not None:
        raise ConfigError("--resume continues training and --eval-only evaluates: give one")
    if args.eval_only is not None:
        from groupbert.training.checkpoint import resolve_checkpoint
        checkpoint = resolve_checkpoint(args.eval_only)
        run_dir = checkpoint.parent.parent   # <run>/checkpoints/step-N
        config_path = config_path or _run_config(run_dir)
        output_dir = args.output_dir or run_dir / f"eval-{checkpoint.name}"
        args.eval_only = checkpoint
    elif args.resume is not None:
        if args.output_dir is not None and args.output_dir.resolve() != args.resume.resolve():
            raise ConfigError("--resume and --output-dir name different directories; --resume continues "
                              "the run in place")
        config_path = config_path or _run_config(args.resume)
        output_dir = args.resume
    else:
        if config_path is None:
            raise ConfigError("give --config FILE (or --resume RUN_DIR, or --eval-only CHECKPOINT)")
        output_dir = args.output_dir or Path("runs") / f"{config_path.resolve().parent.name}_{config_path.stem}"
    cfg = load_config(config_path, overrides)
    return cfg, output_dir


def _run_config(run_dir: Path) -> Path:
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} has no config.yaml: is it a run directory? (or give --config)")
    return path


def main(description: str, job: Callable[[RunConfig, Path, bool], dict], argv: list[str] | None = None,
         evaluate: Callable[[RunConfig, Path, Path], dict] | None = None) -> int:
    """Parse, then run ``job(cfg, output_dir, resume)``, or ``evaluate(cfg, checkpoint, output_dir)`` for
    ``--eval-only``; returns the exit code."""
    parser = build_parser(description)
    args, extra = parser.parse_known_args(argv)
    args.overrides += _dotted_overrides(parser, extra)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("groupbert")
    try:
        cfg, output_dir = resolve_run(args)
        if args.eval_only is not None:
            if evaluate is None:
                raise ConfigError("this program has no --eval-only mode")
            evaluate(cfg, args.eval_only, output_dir)
        else:
            job(cfg, output_dir, args.resume is not None)
    except KeyboardInterrupt:
        print("interrupted; the latest complete checkpoint is intact (continue with --resume)", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - bad input: exit 2 with its message; else 1 with the traceback
        return exit_code_for(e, log)
    return EXIT_OK


def exit_code_for(error: Exception, log: logging.Logger) -> int:
    """2 for :class:`BadInput` (its message on stderr), 1 for anything else (the traceback in the log).
    ``isinstance``, not ``except``: exception matching ignores the classes that join BadInput by marker."""
    if isinstance(error, BadInput):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(getattr(error, "exit_code", None), int):  # a run that ended as its message says (diverged,
        print(f"{error.outcome}: {error}", file=sys.stderr)  # stopped by SIGTERM): no traceback to read
        return error.exit_code
    log.exception("failed: %s", error)
    return EXIT_ERROR


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
