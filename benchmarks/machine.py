"""What machine a benchmark ran on: its JSON records the CPU (with its widest vector ISA) beside the numbers."""
from __future__ import annotations

import platform


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
