"""``python -m groupbert.experiments.sweep FILE [--agents N] [--sweep-dir DIR]``: run a sweep locally.

Starts N agent processes sharing ``DIR`` (default ``runs/sweeps/<file name>``), waits for them, and
writes the report there. Run the same command again to resume an interrupted sweep: finished, stopped,
failed and diverged runs are kept; a run that was cut off is taken up again from its last checkpoint.
Exit codes: 0 done, with a finite value of the metric from some run; 2 bad sweep file, checked before
any run where it can be, or no run logged the metric (the message names the key); 1 an agent failed,
or every run failed or diverged.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from groupbert.config import find_config
from groupbert.experiments.sweep.agent import run_agent
from groupbert.experiments.sweep.report import verdict, write_report
from groupbert.experiments.sweep.spec import REPO, SweepError, load_sweep
from groupbert.experiments.sweep.store import RunStore


def parse_args(argv=None) -> argparse.Namespace:
    """No abbreviations (``--agent 2`` is not ``--agents 2``) and an unknown option is an error naming the
    closest one: a mistyped option must not run a different sweep."""
    p = argparse.ArgumentParser(prog="python -m groupbert.experiments.sweep", description=__doc__.splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("file", type=Path, help="sweep file in W&B's schema (configs/sweeps/)")
    p.add_argument("--sweep-dir", type=Path, help="run store and report (default runs/sweeps/<file name>)")
    p.add_argument("--agents", type=int, default=1, help="agent processes on this machine")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between metric reads of a running run")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the store")
    p.add_argument("--agent-process", action="store_true", help=argparse.SUPPRESS)  # one agent, no report
    args, extra = p.parse_known_args(argv)
    if extra:
        options = [o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        hints = [f"{x} (did you mean {close[0]}?)" if x.startswith("-") and
                 (close := difflib.get_close_matches(x.split("=")[0], options, n=1)) else x for x in extra]
        p.error(f"unrecognized arguments: {' '.join(hints)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        args.file = find_config(args.file)   # a shipped sweep (configs/sweeps/...) from any directory
        sweep = load_sweep(args.file, check_program=not args.agent_process)
        if args.agents < 1:
            raise SweepError("--agents must be at least 1")
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweep_dir = args.sweep_dir or Path("runs") / "sweeps" / args.file.stem
    store = RunStore(sweep_dir)
    saved = sweep_dir / "sweep.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text()) != sweep.config:
        print(f"error: {sweep_dir} holds a different sweep ({saved}); use another --sweep-dir", file=sys.stderr)
        return 2
    if not saved.exists():
        shutil.copyfile(args.file, saved)
    if args.agent_process:
        run_agent(sweep, store, poll=args.poll)
        return 0
    if not args.report_only:
        cmd = [sys.executable, "-m", "groupbert.experiments.sweep", str(args.file.resolve()), "--sweep-dir",
               str(sweep_dir.resolve()), "--poll", str(args.poll), "--agent-process"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        agents = [subprocess.Popen(cmd, env=env) for _ in range(args.agents)]
        try:
            codes = [a.wait() for a in agents]
        except KeyboardInterrupt:
            for a in agents:
                a.terminate()
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return 1
        if any(codes):
            print(f"error: agent exit codes {codes}", file=sys.stderr)
    print(write_report(sweep, store))
    print(f"report: {sweep_dir}/results.md, results.csv, plots/")
    code, message = verdict(sweep, store)
    if message:
        print(message, file=sys.stderr)
    if not args.report_only and any(codes):
        return max(code, 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
