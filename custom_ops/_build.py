"""Compile and load the C++ kernels into ``.cache/custom_ops/`` in the repo (an installed wheel: the user's
cache, :func:`build_dir`): built by ``make setup``, and at run time only when a library is missing or out of
date, with a log line saying so.

Each ``csrc/<name>.cpp`` is its own shared library (registered with ``TORCH_LIBRARY_FRAGMENT`` in the
``groupbert`` namespace), built by ``torch.utils.cpp_extension.load`` with ninja. ``make setup`` builds
them (``python -m custom_ops.build``). No network is involved at any point.

Why not simply call torch's JIT ``load`` at every start (as this module once did): it re-runs ninja in
every process and rebuilds whenever ``build.ninja``'s absolute source paths change (a moved checkout),
silently; and it serialises builds with ``torch.utils.file_baton.FileBaton``, an ``O_EXCL`` file named
``lock`` that records no PID and whose waiters poll ``os.path.exists`` forever, so a build killed by
SIGTERM leaves a ``lock`` on which every later run hangs with an empty log. Here instead:

- a library is named by a hash of what it is built from (:func:`_build_inputs`: source contents, flags,
  torch, Python, compiler, CPU; not the checkout's path), ``<build dir>/<name>/groupbert_<name>.<key>.so``;
  if that file exists it is loaded with ``torch.ops.load_library`` and torch's JIT is not called at all;
- otherwise the process takes our own lock (``fcntl.flock`` on ``.build.lock``, released by the kernel
  when its holder dies, so it cannot go stale; waiting is logged and times out after
  ``GROUPBERT_CUSTOM_OPS_LOCK_TIMEOUT_S``), logs that it is building and why, removes what an
  interrupted build left (torch's ``lock`` can only be stale while we hold the flock), has torch build in
  a scratch directory ``_build/`` and moves the finished library into place with ``os.replace``, so a
  reader never sees a half-written library and a killed build's leftover compiler cannot write into it.

``GROUPBERT_CUSTOM_OPS`` picks the mode (the config's ``runtime.custom_ops`` sets it for a run):
    auto  use the C++ kernels if they build and load; otherwise warn once and use the PyTorch reference
    on    the C++ kernels or an error (a missing compiler, a failed build or a lock time-out is reported)
    off   always the pure-PyTorch reference (``custom_ops.reference``)
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch

MODES = ("auto", "on", "off")
ENV_MODE = "GROUPBERT_CUSTOM_OPS"
ENV_BUILD_DIR = "GROUPBERT_CUSTOM_OPS_BUILD_DIR"
ENV_LOCK_TIMEOUT = "GROUPBERT_CUSTOM_OPS_LOCK_TIMEOUT_S"
LIBRARIES = ("grouped_conv1d", "fused_optim")
LOCK_TIMEOUT_S = 600.0      # a build takes ~30-60 s on 2 shared cores; ten minutes means it is stuck
WAIT_LOG_AFTER_S = 5.0      # say that we wait once the wait is noticeable (or at half the time-out)
LOCK_FILE = ".build.lock"   # ours (flock); never deleted, so every process locks the same inode
TORCH_LOCK_FILE = "lock"    # torch's FileBaton in a JIT build directory
STAMP_FILE = "build.json"   # the inputs of the last successful build, for the log's "why"
WORK_DIR = "_build"         # torch's build directory for the build in progress
KEEP_LIBRARIES = 3          # keyed libraries kept per name, so switching branches back does not rebuild

_CSRC = Path(__file__).resolve().parent / "csrc"
_REPO = Path(__file__).resolve().parent.parent
# -march=native: the libraries are built on the machine that runs them (make setup), and the kernels'
# inner loops are written for the compiler to vectorise. -fno-math-errno lets sqrt vectorise; no
# -ffast-math, so results stay IEEE and comparable with torch's.
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-std=c++17"]
_LDFLAGS = ["-fopenmp"]

logger = logging.getLogger(__name__)

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
    """``GROUPBERT_CUSTOM_OPS_BUILD_DIR``, else ``.cache/custom_ops`` in the checkout (a clone or an editable
    install), else (an installed wheel, or a checkout that is not writable) the user's cache,
    ``$XDG_CACHE_HOME/groupbert/custom_ops`` (default ``~/.cache``); one subdirectory per torch and Python."""
    env = os.environ.get(ENV_BUILD_DIR)
    tag = f"torch-{torch.__version__.replace('+', '_')}-py{sys.version_info.major}{sys.version_info.minor}"
    if env:
        return Path(env)
    checkout_cache = _REPO / ".cache"
    if (_REPO / "pyproject.toml").is_file() and os.access(checkout_cache if checkout_cache.is_dir() else _REPO,
                                                          os.W_OK):
        return checkout_cache / "custom_ops" / tag
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "groupbert" / "custom_ops" / tag


def compiler_available() -> bool:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) is not None and shutil.which("ninja") is not None


def load(name: str, *, verbose: bool = False, setup: bool = False) -> bool:
    """Load library ``name``, building it first if it is missing or out of date; True if its ops are now
    in ``torch.ops.groupbert``. Never raises in ``auto`` mode; the reason for a failure is kept in
    :func:`errors`. ``setup``: called by ``make setup``, where building is the point (logged at INFO, not
    as a WARNING that a run is compiling)."""
    if name not in LIBRARIES:
        raise KeyError(f"unknown custom-op library {name!r}; known: {', '.join(LIBRARIES)}")
    if mode() == "off":
        return False
    if name in _loaded:
        return _loaded[name]
    try:
        _build_and_load(name, verbose=verbose, setup=setup)
        _loaded[name] = True
    except Exception as exc:  # compiler missing, compile error, lock time-out, bad .so: "use the reference"
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


def library_path(name: str) -> Path:
    """Where library ``name`` built from the current inputs lives (it may not exist yet)."""
    return build_dir() / name / f"groupbert_{name}.{_key(_build_inputs(name))}.so"


def lock_timeout_s() -> float:
    """``GROUPBERT_CUSTOM_OPS_LOCK_TIMEOUT_S`` (seconds), or :data:`LOCK_TIMEOUT_S`."""
    raw = os.environ.get(ENV_LOCK_TIMEOUT, "").strip()
    if not raw:
        return LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise CustomOpsError(f"{ENV_LOCK_TIMEOUT}={raw!r} is not a number of seconds >= 0")
    return value


def _build_inputs(name: str) -> dict[str, str]:
    """What a built library depends on. Not the checkout's path: a moved checkout (or a copied cache)
    keeps its libraries, where torch's JIT rebuilds because ``build.ninja`` holds absolute paths. The CPU
    is in because of ``-march=native``: a cache copied to another machine must not load (SIGILL)."""
    return {
        "source": hashlib.sha256((_CSRC / f"{name}.cpp").read_bytes()).hexdigest(),
        "flags": " ".join(_CFLAGS) + " | " + " ".join(_LDFLAGS),
        "torch": f"{torch.__version__} ({torch.version.git_version})",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "compiler": os.environ.get("CXX", "c++"),
        "cpu": _cpu_id(),
    }


def _cpu_id() -> str:
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    return f"{platform.machine()} {hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def _key(inputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


_WHAT_CHANGED = {"source": "the source", "flags": "the compile flags", "torch": "torch",
                 "python": "Python", "compiler": "the compiler (CXX)", "cpu": "the CPU"}


def _why_build(out: Path, inputs: dict[str, str]) -> str:
    """Why library ``out.name`` must be built, from the stamp the last successful build wrote."""
    try:
        last = json.loads((out / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return "no earlier build in this build directory"
    changed = [what for k, what in _WHAT_CHANGED.items() if last.get(k) != inputs.get(k)]
    if not changed:
        return "its library file is missing"
    return " and ".join(changed) + " changed since the last build"


def _build_and_load(name: str, *, verbose: bool, setup: bool) -> None:
    out = build_dir() / name
    inputs = _build_inputs(name)
    library = out / f"groupbert_{name}.{_key(inputs)}.so"
    if library.exists():   # up to date: no lock, no ninja, no compiler needed
        _clean_up_if_idle(out)
        torch.ops.load_library(str(library))
        return
    if not compiler_available():
        raise CustomOpsError(f"{name} is not built for these sources ({library} is missing) and there is "
                             "no C++ compiler or ninja on PATH to build it")
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out, name):
        if not library.exists():   # else the process we waited for built it
            _remove_stale(out)
            if setup:
                logger.info("custom op %s: building (%s) in %s", name, _why_build(out, inputs), out)
            else:
                logger.warning("custom op %s: building (%s; ~30-60 s; `make setup` builds ahead of time) "
                               "in %s", name, _why_build(out, inputs), out)
            _compile(name, out, library, inputs, verbose=verbose)
            return   # torch's load has loaded it
    torch.ops.load_library(str(library))


def _compile(name: str, out: Path, library: Path, inputs: dict[str, str], *, verbose: bool) -> None:
    """Under the build lock: torch's JIT builds and loads the library in ``out/_build`` (its FileBaton
    ``lock`` there is uncontended: every builder holds our flock), then the library moves into place
    atomically and the stamp records what it was built from."""
    from torch.utils.cpp_extension import load as cpp_load

    work = out / WORK_DIR
    work.mkdir()
    built = cpp_load(name=f"groupbert_{name}", sources=[str(_CSRC / f"{name}.cpp")],
                     build_directory=str(work), extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS,
                     is_python_module=False, verbose=verbose)
    os.replace(str(built), library)   # same file system; the loaded mapping is unaffected
    stamp = out / f"{STAMP_FILE}.tmp"
    stamp.write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    os.replace(stamp, out / STAMP_FILE)
    shutil.rmtree(work, ignore_errors=True)
    older = sorted((p for p in out.glob(f"groupbert_{name}.*.so") if p != library),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for p in older[KEEP_LIBRARIES - 1:]:
        p.unlink(missing_ok=True)   # a process that loaded it keeps its mapping


@contextlib.contextmanager
def _build_lock(out: Path, name: str) -> Iterator[Path]:
    """Hold ``out/.build.lock`` (``flock``, exclusive) for a build. Unlike torch's FileBaton, the kernel
    drops it when the holder dies, so a killed build cannot leave it behind; a live holder is waited for
    with a log line, and for at most :func:`lock_timeout_s`."""
    path = out / LOCK_FILE
    timeout = lock_timeout_s()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start, said = time.monotonic(), False
        while not _try_flock(fd):
            waited = time.monotonic() - start
            holder = _holder(path)
            if waited >= timeout:
                raise CustomOpsError(
                    f"timed out after {timeout:g} s waiting for the custom-op build lock on {path}: another "
                    f"process{holder} is building {name}, or is stuck. The kernel releases the lock when "
                    f"that process exits (deleting the file does not help): wait for it or stop it, raise "
                    f"{ENV_LOCK_TIMEOUT}, or set {ENV_MODE}=off to use the PyTorch reference")
            if not said and waited >= min(WAIT_LOG_AFTER_S, timeout / 2):
                logger.warning("waiting for the custom-op build lock on %s (another process%s is building "
                               "%s; giving up after %g s, %s)", path, holder, name, timeout, ENV_LOCK_TIMEOUT)
                said = True
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())   # for the waiters' messages only
        yield path
    finally:
        os.close(fd)   # releases the flock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):   # empty while a new holder writes it
        return f" (pid {int(path.read_text().split()[0])})"
    return ""


def _stale_leftovers(out: Path) -> list[Path]:
    return ([p for p in (out / TORCH_LOCK_FILE, out / WORK_DIR) if p.exists()]
            + list(out.glob(f"{WORK_DIR}.stale-*")))


def _remove_stale(out: Path) -> None:
    """Under our flock, remove what an interrupted build left: torch's FileBaton ``lock`` (no process of
    ours builds without the flock, so it is stale; left there it makes torch's ``load`` wait forever) and
    the scratch build directory. That directory is renamed before it is deleted, so a compiler still
    running from a killed build (ninja outlives its parent) writes into the renamed one, never into ours."""
    locks = [p for p in (out / TORCH_LOCK_FILE, out / WORK_DIR / TORCH_LOCK_FILE) if p.exists()]
    (out / TORCH_LOCK_FILE).unlink(missing_ok=True)
    work = out / WORK_DIR
    if work.exists():
        work.rename(out / f"{WORK_DIR}.stale-{os.getpid()}-{time.monotonic_ns()}")
    for stale in out.glob(f"{WORK_DIR}.stale-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for lock in locks:
        logger.warning("removed a stale build lock left by an interrupted build: %s", lock)


def _clean_up_if_idle(out: Path) -> None:
    """On the fast path: remove an interrupted build's leftovers if nobody is building (flock free)."""
    if not _stale_leftovers(out):
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if _try_flock(fd):
            _remove_stale(out)
    finally:
        os.close(fd)
