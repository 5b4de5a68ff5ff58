"""``python -m custom_ops.build``: compile every C++ kernel library now (``make setup`` runs it).

Exit 0 when all libraries built, or when none could be built because no compiler is present (the
PyTorch reference is then used, and this says so); exit 1 when a compiler is present and a build failed.
"""
from __future__ import annotations

import sys
import time

from custom_ops import _build


def main() -> int:
    _build.set_mode("on" if _build.mode() == "on" else "auto")  # build even when the env says off
    if not _build.compiler_available():
        print("custom_ops: no C++ compiler/ninja found; the pure-PyTorch reference ops will be used")
        return 0
    failed = []
    for name in _build.LIBRARIES:
        t0 = time.perf_counter()
        ok = _build.load(name, verbose="-v" in sys.argv, setup=True)
        status = "ok" if ok else f"FAILED: {_build.errors().get(name)}"
        print(f"custom_ops: {name:16s} {status} ({time.perf_counter() - t0:.1f} s, {_build.build_dir()})")
        if not ok:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
