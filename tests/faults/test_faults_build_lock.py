"""Faults of the custom-op build, each ending in a defined state instead of a silent hang.

torch's JIT build (``torch.utils.cpp_extension.load``) serialises builds with a ``FileBaton``: a file named
``lock`` created with ``O_EXCL``, no PID in it, whose waiters poll ``os.path.exists`` forever. A build
killed by SIGTERM never releases it, and every later run hung on it with an empty log. ``custom_ops._build``
now loads an up-to-date library without torch's JIT, builds under its own ``flock`` (the kernel drops it
when the holder dies), removes a leftover torch ``lock`` with a log line, and gives up waiting for a live
builder after ``GROUPBERT_CUSTOM_OPS_LOCK_TIMEOUT_S``. Every process here runs with a ``timeout=``, so a
hang fails the test rather than hanging it; builds are slow (~30-60 s), so the tests copy one built library
instead of compiling, and the one real compile is marked slow.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from custom_ops import _build

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and signals are POSIX")

ROOT = Path(__file__).resolve().parents[2]
NAME = "grouped_conv1d"
RUN_TIMEOUT_S = 60         # a process that loads a built library: seconds (a hang would be forever)
BUILD_TIMEOUT_S = 600      # one that compiles the real kernel on 2 shared cores

PRELUDE = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
import torch
from custom_ops import _build
"""

# Load in `on` mode, time it, and compare the op with F.conv1d (groups=4).
LOAD_AND_CHECK = """
_build.set_mode("on")
t0 = time.perf_counter()
assert _build.available("grouped_conv1d")
print(f"LOAD_S={time.perf_counter() - t0:.3f}", flush=True)
import torch.nn.functional as F
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(2, 11, 16, generator=g), torch.randn(16, 4, 3, generator=g), torch.randn(16, generator=g)
ref = F.conv1d(x.transpose(1, 2), w, b, padding=1, groups=4).transpose(1, 2)
torch.testing.assert_close(torch.ops.groupbert.grouped_conv1d(x, w, b, 4), ref)
print("OPS_OK", flush=True)
"""

# A stand-in source that compiles in well under a second and registers nothing: enough to exercise the
# build path (decision, lock, log, torch's JIT, publishing) without the real kernel's minute.
QUICK_SOURCE = 'extern "C" int groupbert_build_lock_test() { return 1; }  // test stand-in for the kernel\n'


def _env(build_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (_build.ENV_MODE, _build.ENV_LOCK_TIMEOUT)}
    env.update({"PYTHONPATH": str(ROOT), _build.ENV_BUILD_DIR: str(build_dir), "OMP_NUM_THREADS": "1", **extra})
    return env


def _script(code: str, csrc: Path | None = None) -> list[str]:
    patch = f"_build._CSRC = Path({str(csrc)!r})\n" if csrc else ""
    return [sys.executable, "-u", "-c", PRELUDE + patch + code]


def _python(code: str, build_dir: Path, *, timeout: float = RUN_TIMEOUT_S, csrc: Path | None = None,
            **env: str) -> tuple[int, str, float]:
    """Run ``code`` in a fresh process against ``build_dir``: (exit code, stdout+stderr, seconds)."""
    t0 = time.monotonic()
    proc = subprocess.run(_script(code, csrc), cwd=ROOT, env=_env(build_dir, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, time.monotonic() - t0


@pytest.fixture(scope="module")
def built_library() -> Path:
    """The repo cache's library for the current sources (what ``make setup`` leaves), built once here if
    missing; the tests copy it instead of compiling."""
    if os.environ.get(_build.ENV_BUILD_DIR):
        pytest.skip(f"{_build.ENV_BUILD_DIR} is set: the repo's build cache is not the one to copy")
    library = _build.library_path(NAME)
    if not library.exists():
        if not _build.compiler_available():
            pytest.skip("no C++ compiler/ninja: nothing built to copy")
        env = {k: v for k, v in os.environ.items() if k != _build.ENV_MODE}
        subprocess.run(_script(f'_build.set_mode("on"); assert _build.available({NAME!r})'), cwd=ROOT,
                       env={**env, "PYTHONPATH": str(ROOT)}, check=True, timeout=BUILD_TIMEOUT_S)
    assert library.exists()
    return library


def _copy_cache(library: Path, build_dir: Path) -> Path:
    """A build directory holding the built library and its stamp, as a moved checkout's cache would."""
    out = build_dir / NAME
    out.mkdir(parents=True)
    shutil.copy2(library, out / library.name)
    shutil.copy2(library.parent / _build.STAMP_FILE, out / _build.STAMP_FILE)
    return out


def _quick_csrc(tmp_path: Path) -> Path:
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / f"{NAME}.cpp").write_text(QUICK_SOURCE)
    return csrc


def test_stale_torch_locks_are_removed_and_the_ops_load(built_library, tmp_path):
    """What a SIGTERM during a build leaves (torch's ``lock`` in the build directory, from the old layout,
    and in the scratch ``_build/`` with a half-written build): the next run logs their removal and loads
    the ops, within seconds instead of waiting forever."""
    out = _copy_cache(built_library, tmp_path / "ops")
    (out / _build.TORCH_LOCK_FILE).touch()
    (out / _build.WORK_DIR).mkdir()
    (out / _build.WORK_DIR / _build.TORCH_LOCK_FILE).touch()
    (out / _build.WORK_DIR / "build.ninja").write_text("# interrupted\n")

    rc, log, _ = _python(LOAD_AND_CHECK, tmp_path / "ops")

    assert rc == 0, log
    assert "OPS_OK" in log
    for lock in (out / _build.TORCH_LOCK_FILE, out / _build.WORK_DIR / _build.TORCH_LOCK_FILE):
        assert f"removed a stale build lock left by an interrupted build: {lock}" in log
    assert not (out / _build.TORCH_LOCK_FILE).exists() and not (out / _build.WORK_DIR).exists()
    assert "building" not in log


def test_stale_locks_before_a_build_do_not_hang_it(tmp_path):
    """The same leftovers when the next run has to build: removed under our flock, then the build runs."""
    out = tmp_path / "ops" / NAME
    (out / _build.WORK_DIR).mkdir(parents=True)
    (out / _build.TORCH_LOCK_FILE).touch()
    (out / _build.WORK_DIR / _build.TORCH_LOCK_FILE).touch()
    if not _build.compiler_available():
        pytest.skip("no C++ compiler/ninja")

    rc, log, _ = _python(f"assert _build.load({NAME!r}, verbose=False)", tmp_path / "ops",
                         csrc=_quick_csrc(tmp_path))

    assert rc == 0, log
    assert "removed a stale build lock left by an interrupted build" in log
    assert f"custom op {NAME}: building (no earlier build in this build directory" in log
    assert len(list(out.glob(f"groupbert_{NAME}.*.so"))) == 1 and not (out / _build.WORK_DIR).exists()


def test_a_live_builder_is_waited_for_with_a_message_then_a_timeout(tmp_path):
    """Another live process holds our flock (it is building): a loader says it waits, naming the lock,
    and after GROUPBERT_CUSTOM_OPS_LOCK_TIMEOUT_S gives up with a CustomOpsError naming it (``on``: an
    error, exit 2 through the CLIs) or falls back to the reference with a warning (``auto``)."""
    if not _build.compiler_available():
        pytest.skip("no C++ compiler/ninja: a missing library is an error before any lock")
    out = tmp_path / "ops" / NAME
    out.mkdir(parents=True)
    lock = out / _build.LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode())\nprint('locked', flush=True)\ntime.sleep(120)\n", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code = """
import warnings
_build.set_mode("on")
try:
    _build.available("grouped_conv1d")
except _build.CustomOpsError as exc:
    print(f"ON_ERROR bad_input={exc.bad_input}: {exc}", flush=True)
_build.set_mode("auto")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(f"AUTO_USES_CPP={_build.available('grouped_conv1d')}", flush=True)
print("AUTO_WARNING", *(w.message for w in caught), flush=True)
"""
        rc, log, seconds = _python(code, tmp_path / "ops", **{_build.ENV_LOCK_TIMEOUT: "2"})
    finally:
        holder.kill()
        holder.wait(timeout=10)

    assert rc == 0, log
    waiting = log.find(f"waiting for the custom-op build lock on {lock} (another process (pid {holder.pid}) "
                       f"is building {NAME}")
    error = log.find(f"ON_ERROR bad_input=True: custom op library '{NAME}' is unavailable")
    assert 0 <= waiting < error, log
    assert f"timed out after 2 s waiting for the custom-op build lock on {lock}" in log[error:]
    assert "AUTO_USES_CPP=False" in log and f"AUTO_WARNING custom op library '{NAME}' unavailable" in log
    assert "building" not in log.replace("is building", "")
    assert seconds < RUN_TIMEOUT_S


def test_a_moved_checkout_with_an_intact_cache_does_not_rebuild(built_library, tmp_path):
    """The cache is keyed by what the library is built from, not by the checkout's path (torch's JIT
    rebuilds when ``build.ninja``'s absolute paths change): a copy elsewhere loads with no compile."""
    _copy_cache(built_library, tmp_path / "moved" / "ops")

    rc, log, _ = _python(LOAD_AND_CHECK, tmp_path / "moved" / "ops")

    assert rc == 0, log
    assert "OPS_OK" in log and "building" not in log
    load_s = float(log.split("LOAD_S=")[1].split()[0])
    assert load_s < 1.0, log   # dlopen, no ninja (a no-op torch JIT load costs ~0.5-1 s here)


def test_a_changed_source_is_rebuilt_and_says_so(built_library, tmp_path):
    """The same intact cache, but the source differs from the one it was built from: the run logs that it
    builds and why, before compiling, and keeps the older library (switching back costs nothing)."""
    out = _copy_cache(built_library, tmp_path / "ops")
    if not _build.compiler_available():
        pytest.skip("no C++ compiler/ninja")

    rc, log, _ = _python(f"assert _build.load({NAME!r})", tmp_path / "ops", csrc=_quick_csrc(tmp_path))

    assert rc == 0, log
    assert (f"WARNING custom_ops._build: custom op {NAME}: building (the source changed since the last "
            "build; ~30-60 s; `make setup` builds ahead of time)") in log
    assert len(list(out.glob(f"groupbert_{NAME}.*.so"))) == 2 and (out / built_library.name).exists()


@pytest.mark.slow
def test_sigterm_while_compiling_then_the_next_run_builds_and_works(tmp_path):
    """A real SIGTERM to a process compiling the kernel (its ninja and compiler live on, as they do when
    only the Python process is signalled) leaves torch's ``lock``; the next process removes it, builds in a
    fresh scratch directory the orphaned compiler cannot write into, and its op matches F.conv1d."""
    if not _build.compiler_available():
        pytest.skip("no C++ compiler/ninja")
    build_dir = tmp_path / "ops"
    work = build_dir / NAME / _build.WORK_DIR
    first = subprocess.Popen(_script(LOAD_AND_CHECK), cwd=ROOT, env=_env(build_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (work / "build.ninja").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first build never started"
            time.sleep(0.05)
        time.sleep(1.0)   # ninja has started the compiler
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == -signal.SIGTERM
        assert (work / _build.TORCH_LOCK_FILE).exists(), "the fault left no stale torch lock"

        rc, log, _ = _python(LOAD_AND_CHECK, build_dir, timeout=BUILD_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)   # the orphaned ninja / compiler of the killed build

    assert rc == 0, log
    assert f"removed a stale build lock left by an interrupted build: {work / _build.TORCH_LOCK_FILE}" in log
    assert f"custom op {NAME}: building" in log and "OPS_OK" in log


def test_lock_timeout_setting(monkeypatch):
    monkeypatch.delenv(_build.ENV_LOCK_TIMEOUT, raising=False)
    assert _build.lock_timeout_s() == _build.LOCK_TIMEOUT_S == 600
    monkeypatch.setenv(_build.ENV_LOCK_TIMEOUT, "2.5")
    assert _build.lock_timeout_s() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(_build.ENV_LOCK_TIMEOUT, bad)
        with pytest.raises(_build.CustomOpsError, match=_build.ENV_LOCK_TIMEOUT):
            _build.lock_timeout_s()
