"""What every benchmark repeats: the command line (``--smoke``, ``--output``), interleaved timing rounds,
and a JSON record that says which machine, load and commit its numbers come from.

Scripts run as ``python benchmarks/bench_x.py``, so this folder is on ``sys.path`` and they
``from common import ...``. Nothing here imports torch: data preparation's benchmark runs without it,
and the record names torch's version and threads only where the script loaded it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(parser: argparse.ArgumentParser, argv=None, *, default_output: str | Path | None,
               smoke: dict, output_help: str | None = None) -> argparse.Namespace:
    """Add ``--smoke`` and ``--output`` to ``parser`` and parse. ``--smoke`` makes ``smoke`` (argument
    name -> value: the smallest shapes, one repeat) the defaults, so arguments given explicitly still
    win, and leaves ``output`` None unless ``--output`` is given: a smoke run never overwrites
    ``benchmarks/results/``. ``default_output`` None: the script picks its path (``output_help`` says which)."""
    parser.add_argument("--smoke", action="store_true",
                        help="smallest shapes and one repeat, to check that the script runs; writes JSON "
                             "only to an explicit --output")
    where = output_help or (f"default {shown(default_output)}" if default_output else "none by default")
    parser.add_argument("--output", type=Path, default=None, help=f"JSON path ({where}; none with --smoke)")
    unknown = set(smoke) - {action.dest for action in parser._actions}
    if unknown:  # set_defaults would accept them silently, and the smoke run would not be the smallest
        raise ValueError(f"smoke settings for no argument: {sorted(unknown)}")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    elif args.output is None and default_output is not None:
        args.output = Path(default_output)
    return args


def time_rounds(alternatives: dict[str, Callable[[], object]], repeats: int, warmup: int = 0
                ) -> dict[str, list[float]]:
    """Run the alternatives in turn, ``warmup`` untimed rounds then ``repeats`` timed ones; name -> seconds
    per round. Interleaving makes load from other processes (and drift: turbo, page cache) hit each alike."""
    for _ in range(warmup):
        for run in alternatives.values():
            run()
    times = {name: [] for name in alternatives}
    for _ in range(repeats):
        for name, run in alternatives.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return times


def median(values) -> float:
    return statistics.median(values)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo with its widest vector extension, e.g. "AMD EPYC (avx512f)"."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    lines = info.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    isa = "amx" if "amx_tile" in flags else "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags \
        else "pre-avx2"
    return f"{name} ({isa})"


# the instruction-set extensions that decide matmul speed (fp32 vectors, bf16/fp16 dot products, AMX tiles)
ML_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
            "amx_int8", "amx_fp16")


def cpu_flags() -> list[str]:
    """Which of :data:`ML_FLAGS` this CPU has (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((x for x in f if x.startswith("flags")), "")
    except OSError:
        return []
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in ML_FLAGS if flag in present]


def device_peak(device: str, precision: str = "fp32"):
    """One device's peak matmul rate for ``precision`` (``groupbert.training.hardware``), for MFU columns."""
    import torch

    from groupbert.training import hardware

    dtype = torch.bfloat16 if precision == "bf16" else None
    if torch.device(device).type == "cuda":
        return hardware.cuda_peak(torch.device(device), "bf16" if dtype else "fp32")
    return hardware.cpu_peak("bf16" if dtype else "fp32")


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages: figures taken while other jobs share the cores are not worth quoting."""
    try:
        return list(os.getloadavg())
    except OSError:
        return [float("nan")] * 3


def git_commit() -> tuple[str | None, bool | None]:
    """(HEAD, whether the work tree has changes), or (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, None


def machine() -> dict:
    """The fields every result carries: CPU, cores, versions, threads, commit, load at the end of the run."""
    commit, dirty = git_commit()
    info = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    info.update(git_commit=commit, git_dirty=dirty, load_average_at_end=load_average())
    return info


def shown(path: str | Path) -> str:
    """``path`` relative to the repository when inside it (as the scripts print and document paths)."""
    path = Path(path)
    return os.path.relpath(path, ROOT) if path.resolve().is_relative_to(ROOT) else str(path)


def write_results(record: dict, path: str | Path | None, *, smoke: bool = False) -> dict:
    """Add :func:`machine`'s fields (the script's own keep precedence) and ``smoke``, and write ``record``
    as JSON to ``path`` (its folder created); ``path`` None writes nothing. Returns the full record."""
    full = {**machine(), **record, "smoke": smoke}
    full = {"benchmark": full.pop("benchmark", None), **full}  # the name first, as the files always had it
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(full, indent=1) + "\n")
        print(f"wrote {shown(path)}")
    return full
