"""The files of a prepared dataset: MLM + NSP instance shards (Arrow) and causal-LM token shards (flat).

- **MLM + NSP**: an Arrow IPC *stream* file (``.arrow``), one record batch, unpadded rows:
  ``input_ids`` list<uint16|uint32> (``[CLS] A [SEP] B [SEP]``), ``segment_b_start`` uint16 (B's first
  position), ``next_sentence_label`` int8 and, when masked at preparation time, ``masked_lm_positions``
  list<uint16> and ``masked_lm_labels`` list<uint16|uint32>. It is the format ``datasets`` itself writes,
  so ``datasets.Dataset.from_file(path)`` or ``pyarrow.ipc.open_stream`` read a shard directly; training
  memory-maps it (``pyarrow.memory_map``: the ids are never copied into Python objects).
- **Causal LM**: a 64-byte header (magic ``GBTOKENS``, version, bytes per token, token count, documents)
  followed by the token ids as little-endian uint16 (any vocabulary up to 65,536 entries, GPT-2's 50,257
  included) or uint32, as nanoGPT's ``train.bin`` and modded-nanogpt's shards; ``numpy.memmap`` reads it.

Every file is written to a temporary name in its directory and renamed into place, so a shard either
exists whole or not at all; its sha256 and size are returned for the manifest.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from groupbert.data.errors import DataError

TOKEN_MAGIC = b"GBTOKENS"
TOKEN_HEADER = struct.Struct("<8sIIQQ32x")     # magic, version, bytes per token, tokens, documents
TOKEN_FORMAT_VERSION = 1
ARROW_META_KEY = b"groupbert"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (BERT's 30,522 and GPT-2's 50,257 do), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@contextlib.contextmanager
def _atomic(path: Path):
    """Yield a temporary path beside ``path``; on success it is synced and renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: Path, data) -> None:
    with _atomic(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomically(path: Path, obj) -> None:
    _write_atomically(Path(path), (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# MLM + NSP instances (Arrow)
# --------------------------------------------------------------------------------------------------

def write_instance_shard(path: Path, instances, dtype: np.dtype, meta: dict) -> None:
    """One shard of :class:`groupbert.data.masked_lm.Instances` as an Arrow stream file; ``meta`` (JSON)
    goes into the schema's metadata (``seq_len``, and the counts of the input it was built from)."""
    import pyarrow as pa

    if instances.offsets[-1] >= 1 << 31:
        raise DataError(f"{path}: {instances.offsets[-1]} tokens in one shard exceed Arrow's 32-bit list "
                        "offsets; lower data.shard_size_mb")

    def ragged(values, offsets, value_dtype):
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                        pa.array(values.astype(value_dtype, copy=False)))

    id_type = np.dtype(dtype)
    columns = {
        "input_ids": ragged(instances.ids, instances.offsets, id_type),
        "segment_b_start": pa.array(instances.b_start.astype(np.uint16)),
        "next_sentence_label": pa.array(instances.next_sentence_label.astype(np.int8)),
    }
    if instances.mask_offsets is not None:
        columns["masked_lm_positions"] = ragged(instances.masked_positions, instances.mask_offsets, np.uint16)
        columns["masked_lm_labels"] = ragged(instances.masked_labels, instances.mask_offsets, id_type)
    batch = pa.RecordBatch.from_pydict(columns)
    schema = batch.schema.with_metadata({ARROW_META_KEY: json.dumps(meta).encode("utf-8")})
    with _atomic(Path(path)) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch.replace_schema_metadata(schema.metadata))   # streamed to disk, not buffered


@dataclass
class InstanceShard:
    """A memory-mapped instance shard: numpy views on its Arrow buffers (no copies)."""
    path: Path
    ids: np.ndarray
    offsets: np.ndarray
    b_start: np.ndarray
    next_sentence_label: np.ndarray
    masked_positions: Optional[np.ndarray] = None
    masked_labels: Optional[np.ndarray] = None
    mask_offsets: Optional[np.ndarray] = None
    meta: Optional[dict] = None
    _table: object = None          # keeps the memory map alive

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def open_instance_shard(path: Path) -> InstanceShard:
    """A shard as numpy views; a file that is not a whole shard of ours (missing, truncated, garbled anywhere
    pyarrow or our metadata can tell) is a DataError naming it."""
    import pyarrow as pa

    try:
        return _instance_shard(path)
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException) as exc:   # DataError is a ValueError
        if isinstance(exc, DataError):
            raise
        raise DataError(f"prepared shard {path} cannot be read ({type(exc).__name__}: {exc}); it is missing, "
                        "truncated, corrupted or not one of ours: prepare the data again") from exc


def _instance_shard(path: Path) -> InstanceShard:
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
    table.validate(full=True)   # offsets inside their buffers: O(rows), no copy of the ids
    if table.num_rows and table.column("input_ids").num_chunks != 1:
        raise DataError(f"prepared shard {path} holds {table.column('input_ids').num_chunks} record batches, "
                        "expected one")

    def ragged(name):   # int32 offsets stay a view too: a copy would cost 8 bytes per instance in RAM
        col = table.column(name).chunk(0)
        return col.values.to_numpy(zero_copy_only=True), col.offsets.to_numpy(zero_copy_only=True)

    def flat(name):
        return table.column(name).chunk(0).to_numpy(zero_copy_only=True)

    raw_meta = (table.schema.metadata or {}).get(ARROW_META_KEY)
    meta = json.loads(raw_meta) if raw_meta else None
    if table.num_rows == 0:
        empty = np.zeros(0, np.int64)
        return InstanceShard(Path(path), empty, np.zeros(1, np.int64), empty, empty, meta=meta, _table=table)
    ids, offsets = ragged("input_ids")
    shard = InstanceShard(Path(path), ids, offsets, flat("segment_b_start"), flat("next_sentence_label"),
                          meta=meta, _table=table)
    if "masked_lm_positions" in table.column_names:
        shard.masked_positions, shard.mask_offsets = ragged("masked_lm_positions")
        shard.masked_labels, _ = ragged("masked_lm_labels")
    return shard


# --------------------------------------------------------------------------------------------------
# Causal-LM token streams (flat)
# --------------------------------------------------------------------------------------------------

def write_token_shard(path: Path, tokens: np.ndarray, dtype: np.dtype, documents: int) -> None:
    tokens = np.ascontiguousarray(tokens, dtype=np.dtype(dtype).newbyteorder("<"))
    header = TOKEN_HEADER.pack(TOKEN_MAGIC, TOKEN_FORMAT_VERSION, tokens.itemsize, len(tokens), documents)
    with _atomic(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(header)
        tokens.tofile(f)


def open_token_shard(path: Path) -> np.ndarray:
    """The tokens of a shard as a read-only memory map; a clear error if the file is not whole."""
    return _token_shard(path)[0]


def _token_shard(path: Path) -> tuple[np.ndarray, int]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(TOKEN_HEADER.size)
    except OSError as exc:
        raise DataError(f"prepared shard {path} cannot be read: {exc}") from exc
    if len(head) < TOKEN_HEADER.size:
        raise DataError(f"prepared shard {path} is truncated (no complete header)")
    magic, version, itemsize, count, documents = TOKEN_HEADER.unpack(head)
    if magic != TOKEN_MAGIC or version != TOKEN_FORMAT_VERSION or itemsize not in (2, 4):
        raise DataError(f"prepared shard {path} is not a token shard of format {TOKEN_FORMAT_VERSION}")
    if size != TOKEN_HEADER.size + count * itemsize:
        raise DataError(f"prepared shard {path} is truncated or padded: {size} bytes for {count} tokens")
    if count == 0:
        return np.zeros(0, dtype=np.uint16 if itemsize == 2 else np.uint32), documents
    tokens = np.memmap(path, dtype=np.dtype(f"<u{itemsize}"), mode="r", offset=TOKEN_HEADER.size, shape=(count,))
    return tokens, documents


# --------------------------------------------------------------------------------------------------
# Manifest entries, read back from the files themselves
# --------------------------------------------------------------------------------------------------

def instance_shard_entry(path: Path, seq_len: int) -> dict:
    """A shard's manifest entry, computed from the file as it is on disk (a fresh one, or one a killed run
    finished): counts, length histogram, size, sha256, and the input counts stored in its metadata."""
    shard = open_instance_shard(path)
    lengths = np.asarray(shard.lengths)
    entry = {"rows": len(shard), "tokens": int(lengths.sum()),
             "length_histogram": np.bincount(lengths, minlength=seq_len + 1).tolist(),
             "random_next": int(np.asarray(shard.next_sentence_label, dtype=np.int64).sum()),
             "input_tokens": (shard.meta or {}).get("input_tokens", 0),
             "bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
    if shard.mask_offsets is not None:
        entry["masked"] = int(shard.mask_offsets[-1])
    return entry


def token_shard_entry(path: Path) -> dict:
    tokens, documents = _token_shard(path)
    return {"rows": documents, "tokens": len(tokens), "input_tokens": len(tokens),
            "bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
