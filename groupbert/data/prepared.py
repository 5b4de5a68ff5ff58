"""Training data from a prepared directory (``groupbert.data.prepare``): memory-mapped shards, one index
space over all of them, batches gathered by index.

- :class:`MaskedLMData`: MLM + NSP instances. Row ``i`` of the split is instance ``i`` counting through the
  shards in manifest order, or with packing a packed row of up to ``max_sequences_per_pack`` instances.
  Static masks are read from the shards; dynamic masks (``data.masking: dynamic``) are drawn for every
  (training seed, epoch, instance) by ``groupbert.data.masking``, so the same position in the same epoch
  always gets the same mask, in any process, after any resume.
- :class:`CausalLMData`: GPT-2 blocks. The token streams of the shards, in manifest order, form one stream
  that is cut into blocks of ``seq_len`` (the last partial block is dropped; a block may span two shards).

Both expose ``len()``, ``num_sequences`` and ``gather(indices, epoch)`` -> dict of int64 numpy arrays in the
models' column layout (``groupbert.data.columns``: ``MASKED_LM`` / ``PACKED_MASKED_LM`` / ``CAUSAL_LM``);
``groupbert.data.loader`` draws the indices (a fresh global permutation per epoch) and deals them to ranks.

Opening checks every shard against the manifest (present, its exact size, readable, its row or token
count) and with ``verify_checksums`` its sha256: a missing, truncated or altered shard is a
:class:`DataError` at training start, never a shorter epoch.

Packed rows: each shard's instances are packed by SPFHP (``groupbert.data.packing``) on their lengths,
seeded by (training seed, shard); the rows' member lists are computed once, written to ``data.cache_dir``
as a ``.npy`` (memory-mapped afterwards, one shard in RAM at a time while it is built) and shared by
every epoch, rank and resume.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from groupbert.data.cache import cached_array, entry_path
from groupbert.data.errors import DataError
from groupbert.data.masking import IGNORE_INDEX, MaskingSpec, hash_key, mask_rows
from groupbert.data.packing import assign_rows, layout_from_members, max_predictions_per_row, pack_columns, spfhp
from groupbert.data.prepare import check_shard_size, verify_shards
from groupbert.data.masked_lm import pad_rows
from groupbert.data.shards import open_instance_shard, open_token_shard

logger = logging.getLogger(__name__)

_DYNAMIC_MASK_TAG = 0xD1A4C


def _open_entries(root: Path, manifest: dict, split: str, verify_checksums: bool) -> list[dict]:
    entries = manifest["shards"][split]
    for entry in entries:
        check_shard_size(root / entry["path"], entry)
    if verify_checksums and entries:
        verify_shards(root, entries)
    return entries


class MaskedLMData:
    """One split of a prepared MLM + NSP directory, unpacked or packed."""

    def __init__(self, root, manifest: dict, split: str, *, spec: MaskingSpec, seq_len: int, seed: int,
                 max_per_pack: Optional[int] = None, cache_dir=None, verify_checksums: bool = False):
        self.root, self.split, self.spec, self.seq_len, self.seed = Path(root), split, spec, seq_len, seed
        self.static = manifest["settings"]["masking"] == "static"
        if manifest["settings"]["seq_len"] != seq_len:
            raise DataError(f"{root} holds instances of length {manifest['settings']['seq_len']}, not {seq_len}")
        self.entries = _open_entries(self.root, manifest, split, verify_checksums)
        self.shards = []
        for entry in self.entries:
            shard = open_instance_shard(self.root / entry["path"])
            if len(shard) != entry["rows"] or int(shard.offsets[-1]) != entry["tokens"]:
                raise DataError(f"prepared shard {shard.path} holds {len(shard)} instances, the manifest says "
                                f"{entry['rows']}: prepare the data again")
            if self.static and shard.mask_offsets is None:
                raise DataError(f"prepared shard {shard.path} has no stored masks but the manifest says static")
            self.shards.append(shard)
        counts = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_sequences = int(self.starts[-1])
        self.max_per_pack = max_per_pack
        self.members = None
        if max_per_pack:
            self.members = self._packed_index(manifest, cache_dir)
            self.predictions_per_row = max_predictions_per_row(seq_len, spec.mask_prob, spec.max_predictions,
                                                               max_per_pack)

    def __len__(self) -> int:
        return len(self.members) if self.members is not None else self.num_sequences

    # ---- unpacked sequences -------------------------------------------------------------------------
    def sequences(self, indices: np.ndarray, epoch: int) -> dict:
        """Instances ``indices`` (global) as padded :data:`COLUMNS`; dynamic masks drawn for ``epoch``."""
        idx = np.asarray(indices, dtype=np.int64)
        K, T, P = len(idx), self.seq_len, self.spec.max_predictions
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1
        if K and (idx.min() < 0 or idx.max() >= self.num_sequences):
            raise IndexError(f"instance index out of range [0, {self.num_sequences})")
        local = idx - self.starts[shard_of]
        ids = np.full((K, T), self.spec.special.pad, dtype=np.int64)
        lengths = np.zeros(K, dtype=np.int64)
        b_start = np.zeros(K, dtype=np.int64)
        nsp = np.zeros(K, dtype=np.int64)
        positions = np.zeros((K, P), dtype=np.int64)
        labels = np.full((K, P), IGNORE_INDEX, dtype=np.int64)
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            rows, shard = local[sel], self.shards[s]
            ids[sel] = pad_rows(shard.ids, shard.offsets, rows, T, self.spec.special.pad)
            lengths[sel] = shard.offsets[rows + 1] - shard.offsets[rows]
            b_start[sel] = shard.b_start[rows]
            nsp[sel] = shard.next_sentence_label[rows]
            if self.static:
                positions[sel] = pad_rows(shard.masked_positions, shard.mask_offsets, rows, P, 0)
                labels[sel] = pad_rows(shard.masked_labels, shard.mask_offsets, rows, P, IGNORE_INDEX)
        if not self.static:
            keys = hash_key(_DYNAMIC_MASK_TAG, self.seed, epoch, idx)
            ids, positions, labels = mask_rows(ids, lengths, keys, self.spec)
        t = np.arange(T)
        return {"input_ids": ids,
                "token_type_ids": ((t >= b_start[:, None]) & (t < lengths[:, None])).astype(np.int64),
                "attention_mask": (t < lengths[:, None]).astype(np.int64),
                "masked_lm_positions": positions, "masked_lm_labels": labels,
                "next_sentence_label": nsp}

    def gather(self, indices, epoch: int) -> dict:
        if self.members is None:
            return self.sequences(indices, epoch)
        members = np.asarray(self.members[np.asarray(indices, dtype=np.int64)])
        valid = members >= 0
        columns = self.sequences(members[valid], epoch)
        local = np.full(members.shape, -1, dtype=np.int64)
        local[valid] = np.arange(int(valid.sum()))
        lengths = columns["attention_mask"].sum(1)
        layout = layout_from_members(local, lengths, self.seq_len, self.max_per_pack)
        packed = pack_columns(columns, layout, self.spec.special.pad, self.predictions_per_row)
        return {k: v.astype(np.int64) for k, v in packed.items()}

    # ---- the packed index -----------------------------------------------------------------------------
    def _packed_index(self, manifest: dict, cache_dir) -> np.ndarray:
        S, T = self.max_per_pack, self.seq_len
        plans = [spfhp(np.repeat(np.arange(len(e["length_histogram"])), e["length_histogram"]), T, S)
                 for e in self.entries]
        n_rows = sum(p.num_rows for p in plans)
        path = None if cache_dir is None else entry_path(
            cache_dir, "packed", {"shards": [e["sha256"] for e in self.entries], "S": S, "T": T, "seed": self.seed},
            ".npy")

        def fill(members: np.ndarray) -> None:
            r = 0
            for s, (shard, plan) in enumerate(zip(self.shards, plans)):
                local = assign_rows(np.asarray(shard.lengths), plan, seed=[self.seed, s])
                rows = np.full((plan.num_rows, S), -1, dtype=np.int64)
                rows[:, :local.shape[1]] = np.where(local >= 0, local + self.starts[s], -1)
                members[r:r + plan.num_rows] = rows
                r += plan.num_rows

        dtype = np.int32 if self.num_sequences < 1 << 31 else np.int64
        members = cached_array(path, (n_rows, S), dtype, fill)
        logger.info("packed %d %s sequences into %d rows of %d (%.3f per row)", self.num_sequences, self.split,
                    n_rows, T, self.num_sequences / max(n_rows, 1))
        return members


class CausalLMData:
    """One split of a prepared causal-LM directory as blocks of ``seq_len`` tokens."""

    def __init__(self, root, manifest: dict, split: str, *, seq_len: int, verify_checksums: bool = False):
        self.root, self.seq_len = Path(root), seq_len
        self.entries = _open_entries(self.root, manifest, split, verify_checksums)
        self.streams = []
        for entry in self.entries:
            tokens = open_token_shard(self.root / entry["path"])
            if len(tokens) != entry["tokens"]:
                raise DataError(f"prepared shard {self.root / entry['path']} holds {len(tokens)} tokens, the "
                                f"manifest says {entry['tokens']}: prepare the data again")
            self.streams.append(tokens)
        self.bounds = np.concatenate([[0], np.cumsum([len(t) for t in self.streams])]).astype(np.int64)
        self.num_sequences = int(self.bounds[-1]) // seq_len

    def __len__(self) -> int:
        return self.num_sequences

    def _tokens(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        s = int(np.searchsorted(self.bounds, start, side="right")) - 1
        filled = 0
        while filled < count:
            offset = start + filled - self.bounds[s]
            take = min(count - filled, len(self.streams[s]) - offset)
            out[filled:filled + take] = self.streams[s][offset:offset + take]
            filled += take
            s += 1
        return out

    def gather(self, indices, epoch: int) -> dict:
        del epoch   # blocks are fixed: the order is the loader's
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_sequences):
            raise IndexError(f"block index out of range [0, {self.num_sequences})")
        blocks = np.stack([self._tokens(int(i) * self.seq_len, self.seq_len) for i in idx]) if len(idx) else \
            np.zeros((0, self.seq_len), np.int64)
        return {"input_ids": blocks, "labels": blocks.copy()}
