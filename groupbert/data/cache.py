"""The data cache under ``data.cache_dir``: what a training run derives from its inputs, keyed by content.

Two things live there: the prepared shards of the on-the-fly path (the same ``prepare`` a user runs by
hand, reused while the inputs, settings and tokenizer are unchanged) and derived index arrays such as the
packed-row index of ``prepared.MaskedLMData``. Entries are named by a hash of what they depend on, so a
changed input makes a new entry instead of a stale hit, and each is written under a temporary name and
renamed into place, so a run killed mid-write leaves no half-written entry behind.

The cache is derived data: an entry that is damaged all the same (a disk error, a full disk, a copy cut short,
a hand edit) is checked for cheaply when it is opened (a prepared entry: its manifest, every shard's size and
header, and its sha256 unless ``verify_checksums`` is off; an index array: its header and size), logged as a
WARNING naming it, and built again. A ``data.cache_dir`` that cannot be created or written is a
:class:`~groupbert.data.errors.DataError` naming the key, before any work.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

KEY_CHARS = 24   # 96 bits of the sha256 in a file name: collisions are not a practical concern


def content_key(payload: dict) -> str:
    """sha256 of ``payload`` as canonical JSON (sorted keys): equal content, equal key, on any machine."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir, stem: str, payload: dict, suffix: str = "") -> Path:
    return Path(cache_dir) / f"{stem}-{content_key(payload)[:KEY_CHARS]}{suffix}"


def writable_cache_dir(cache_dir) -> Path:
    """``data.cache_dir``, created if need be and probed with a temporary file: a path that is a file, lies
    under one, or is on a read-only directory or file system is a DataError naming the key, at the start of
    the run rather than a traceback in the middle of it."""
    path = Path(cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"data.cache_dir: cannot create or write the data cache {path}: {e.strerror or e}; "
                        "choose a writable directory") from None
    return path


def cached_array(path: Optional[Path], shape: tuple, dtype, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """A memory-mapped ``.npy`` at ``path`` if one of this shape and dtype is there, whole; otherwise ``fill``
    writes a new one (through a temporary file and a rename). With ``path`` None the array is built in memory."""
    if path is None:
        array = np.empty(shape, dtype=dtype)
        fill(array)
        return array
    if path.exists():
        array = _open_array(path, tuple(shape), np.dtype(dtype))
        if array is not None:
            return array
    writable_cache_dir(path.parent)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        fill(array)
        array.flush()
        del array
        os.replace(tmp, path)
    except OSError as e:   # a full disk or a quota: the run cannot go on, and no half-written entry stays
        raise DataError(f"data.cache_dir: cannot write the cache entry {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _open_array(path: Path, shape: tuple, dtype: np.dtype) -> Optional[np.ndarray]:
    """The cached array, or None (with a WARNING) when the file is not a whole ``.npy`` of this shape."""
    try:
        array = np.load(path, mmap_mode="r")
        size = path.stat().st_size
    except Exception as e:  # noqa: BLE001 - derived data: whatever numpy's header parser raises, build it again
        logger.warning("cache entry %s is unreadable (%s): building it again", path, e)
        return None
    if array.shape != shape or array.dtype != dtype or size != array.offset + array.nbytes:
        logger.warning("cache entry %s holds %s %s in %d bytes, expected %s %s: building it again", path,
                       array.dtype, array.shape, size, dtype, shape)
        return None
    return array


def prepared_in_cache(settings, cache_dir, *, num_proc: Optional[int] = None, show_progress: bool = True,
                      verify_checksums: bool = True) -> Path:
    """The training run's on-the-fly path: ``prepare`` into ``cache_dir``, keyed by the inputs (files' paths,
    sizes and mtimes), the settings and the tokenizer; reused when its manifest is there and the entry is
    whole (sizes and shard headers always, sha256 with ``verify_checksums``), else prepared again."""
    from groupbert.data import prepare as prep
    from groupbert.data.sources import input_fingerprint

    _, tokenizer = prep.tokenizer_for(settings)
    payload = {"format_version": prep.FORMAT_VERSION, "settings": settings.content(),
               "inputs": input_fingerprint(settings.corpus),
               "tokenizer": {k: v for k, v in tokenizer.items() if k != "vocab_file"}}
    out = entry_path(writable_cache_dir(cache_dir), f"prepared-{settings.kind}", payload)
    with _entry_lock(out):   # one process checks (and rebuilds) an entry at a time: ranks, sweep agents
        problem = _entry_problem(out, verify_checksums)
        if problem is not None:
            logger.warning("cache entry %s is damaged (%s): preparing it again", out, problem)
            _discard(out)
        if (out / prep.MANIFEST).exists():
            logger.info("reusing prepared data at %s", out)
        else:
            prep.prepare(settings, out, num_proc=num_proc, show_progress=show_progress)
    return out


@contextlib.contextmanager
def _entry_lock(entry: Path):
    with open(entry.parent / f".{entry.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _entry_problem(out: Path, verify_checksums: bool) -> Optional[str]:
    """Why the prepared entry ``out`` cannot be reused as it is, or None (absent, whole, or an unfinished
    preparation, which ``prepare`` resumes)."""
    from groupbert.data import prepare as prep
    from groupbert.data.shards import open_instance_shard, open_token_shard

    try:
        if not (out / prep.MANIFEST).exists():
            if (out / prep.PLAN).exists():
                prep._read_json(out / prep.PLAN)   # unreadable: prepare would refuse to resume it
            return None
        manifest = prep.load_manifest(out)
        entries = [e for split in prep.SPLITS for e in manifest["shards"][split]]
        for entry in entries:
            prep.check_shard_size(out / entry["path"], entry)
            if manifest["settings"]["kind"] == "mlm_nsp":
                rows = len(open_instance_shard(out / entry["path"]))
            else:
                rows = len(open_token_shard(out / entry["path"]))
            expected = entry["rows"] if manifest["settings"]["kind"] == "mlm_nsp" else entry["tokens"]
            if rows != expected:
                return f"{out / entry['path']} holds {rows} rows or tokens, the manifest says {expected}"
        if verify_checksums and entries:
            prep.verify_shards(out, entries)
    except (KeyError, TypeError, ValueError) as e:   # DataError included; a manifest missing its fields too
        return str(e) or type(e).__name__
    return None


def _discard(out: Path) -> None:
    """Move a damaged entry aside (one rename: never a half-deleted entry under the live name), then delete it."""
    aside = out.parent / f".{out.name}.damaged-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(out, aside)
    except OSError as e:
        raise DataError(f"data.cache_dir: cannot remove the damaged cache entry {out}: {e.strerror or e}; "
                        "delete it by hand") from None
    shutil.rmtree(aside, ignore_errors=True)
