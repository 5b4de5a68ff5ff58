"""Compile and load the C++ kernels, once per source change, into ``.cache/custom_ops/`` in the repo.

Each ``csrc/<name>.cpp`` is its own shared library (registered with ``TORCH_LIBRARY_FRAGMENT`` in the
``groupbert`` namespace), built by ``torch.utils.cpp_extension.load`` with ninja. ``make setup`` builds
them (``python -m custom_ops.build``); at run time they are only loaded, and rebuilt when a source
changed. No network is involved at any point.

``GROUPBERT_CUSTOM_OPS`` picks the mode (the config's ``runtime.custom_ops`` sets it for a run):
    auto  use the C++ kernels if they build and load; otherwise warn once and use the PyTorch reference
    on    the C++ kernels or an error (a missing compiler or a failed build is reported, not hidden)
    off   always the pure-PyTorch reference (``custom_ops.reference``)
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

MODES = ("auto", "on", "off")
ENV_MODE = "GROUPBERT_CUSTOM_OPS"
ENV_BUILD_DIR = "GROUPBERT_CUSTOM_OPS_BUILD_DIR"
LIBRARIES = ("grouped_conv1d", "fused_optim")

_CSRC = Path(__file__).resolve().parent / "csrc"
_REPO = Path(__file__).resolve().parent.parent
# -march=native: the libraries are built on the machine that runs them (make setup), and the kernels'
# inner loops are written for the compiler to vectorise. -fno-math-errno lets sqrt vectorise; no
# -ffast-math, so results stay IEEE and comparable with torch's.
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-std=c++17"]

_mode_override: Optional[str] = None
_loaded: dict[str, bool] = {}
_errors: dict[str, str] = {}


class CustomOpsError(RuntimeError):
    """``on`` mode and a kernel library could not be built or loaded."""

    bad_input = True   # groupbert.errors.BadInput: the command lines exit with code 2


def mode() -> str:
    m = _mode_override or os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if m not in MODES:
        raise CustomOpsError(f"{ENV_MODE}={m!r} is not one of {', '.join(MODES)}")
    return m


def set_mode(m: Optional[str]) -> None:
    """Override ``GROUPBERT_CUSTOM_OPS`` for this process (None: back to the environment)."""
    global _mode_override
    if m is not None and m not in MODES:
        raise CustomOpsError(f"custom ops mode {m!r} is not one of {', '.join(MODES)}")
    _mode_override = m


def build_dir() -> Path:
    env = os.environ.get(ENV_BUILD_DIR)
    tag = f"torch-{torch.__version__.replace('+', '_')}-py{sys.version_info.major}{sys.version_info.minor}"
    return Path(env) if env else _REPO / ".cache" / "custom_ops" / tag


def compiler_available() -> bool:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) is not None and shutil.which("ninja") is not None


def load(name: str, *, verbose: bool = False) -> bool:
    """Build (if needed) and load library ``name``; True if its ops are now in ``torch.ops.groupbert``.
    Never raises in ``auto`` mode; the reason for a failure is kept in :func:`errors`."""
    if name not in LIBRARIES:
        raise KeyError(f"unknown custom-op library {name!r}; known: {', '.join(LIBRARIES)}")
    if mode() == "off":
        return False
    if name in _loaded:
        return _loaded[name]
    try:
        _build_and_load(name, verbose=verbose)
        _loaded[name] = True
    except Exception as exc:  # compiler missing, compile error, bad .so: all mean "use the reference"
        _loaded[name] = False
        _errors[name] = f"{type(exc).__name__}: {exc}"
    return _loaded[name]


def available(name: str) -> bool:
    """True if the C++ library ``name`` is in use; ``on`` mode raises instead of returning False."""
    ok = load(name)
    if not ok and mode() == "on":
        raise CustomOpsError(f"custom op library {name!r} is unavailable ({ENV_MODE}=on): "
                             f"{_errors.get(name, 'not built')}")
    if not ok and mode() == "auto" and name in _errors and name not in _warned:
        _warned.add(name)
        warnings.warn(f"custom op library {name!r} unavailable, using the PyTorch reference instead "
                      f"({_errors[name]}). Run `make setup` to build it; set {ENV_MODE}=off to silence "
                      "this.", RuntimeWarning, stacklevel=3)
    return ok


_warned: set[str] = set()


def errors() -> dict[str, str]:
    return dict(_errors)


def _build_and_load(name: str, *, verbose: bool) -> None:
    if not compiler_available():
        raise CustomOpsError("no C++ compiler or ninja on PATH")
    from torch.utils.cpp_extension import load as cpp_load

    out = build_dir() / name
    out.mkdir(parents=True, exist_ok=True)
    cpp_load(name=f"groupbert_{name}", sources=[str(_CSRC / f"{name}.cpp")], build_directory=str(out),
             extra_cflags=_CFLAGS, extra_ldflags=["-fopenmp"], is_python_module=False, verbose=verbose)
