"""The data cache under ``data.cache_dir``: what a training run derives from its inputs, keyed by content.

Two things live there: the prepared shards of the on-the-fly path (the same ``prepare`` a user runs by
hand, reused while the inputs, settings and tokenizer are unchanged) and derived index arrays such as the
packed-row index of ``prepared.MaskedLMData``. Entries are named by a hash of what they depend on, so a
changed input makes a new entry instead of a stale hit, and each is written under a temporary name and
renamed into place, so a run killed mid-write leaves no half-written entry behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Optional

import numpy as np

logger = logging.getLogger(__name__)

KEY_CHARS = 24   # 96 bits of the sha256 in a file name: collisions are not a practical concern


def content_key(payload: dict) -> str:
    """sha256 of ``payload`` as canonical JSON (sorted keys): equal content, equal key, on any machine."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir, stem: str, payload: dict, suffix: str = "") -> Path:
    return Path(cache_dir) / f"{stem}-{content_key(payload)[:KEY_CHARS]}{suffix}"


def cached_array(path: Optional[Path], shape: tuple, dtype, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """A memory-mapped ``.npy`` at ``path`` if one of this shape is there; otherwise ``fill`` writes a new one
    (through a temporary file and a rename). With ``path`` None the array is built in memory only."""
    if path is None:
        array = np.empty(shape, dtype=dtype)
        fill(array)
        return array
    if path.exists():
        array = np.load(path, mmap_mode="r")
        if array.shape == tuple(shape):
            return array
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
    fill(array)
    array.flush()
    del array
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def prepared_in_cache(settings, cache_dir, *, num_proc: Optional[int] = None, show_progress: bool = True) -> Path:
    """The training run's on-the-fly path: ``prepare`` into ``cache_dir``, keyed by the inputs (files' paths,
    sizes and mtimes), the settings and the tokenizer; reused when its manifest is there."""
    from groupbert.data import prepare as prep
    from groupbert.data.sources import input_fingerprint

    _, tokenizer = prep.tokenizer_for(settings)
    payload = {"format_version": prep.FORMAT_VERSION, "settings": settings.content(),
               "inputs": input_fingerprint(settings.corpus),
               "tokenizer": {k: v for k, v in tokenizer.items() if k != "vocab_file"}}
    out = entry_path(cache_dir, f"prepared-{settings.kind}", payload)
    if (out / prep.MANIFEST).exists():
        logger.info("reusing prepared data at %s", out)
    else:
        prep.prepare(settings, out, num_proc=num_proc, show_progress=show_progress)
    return out
