"""Shuffled micro-batches over a dataset, resumable at any micro-batch, shardable over ranks.

The order of epoch ``e`` is a permutation of the whole dataset drawn for ``(seed, e)``, so the position
``(epoch, batch)`` is all a checkpoint needs to continue exactly where a run stopped.

- Prepared data (``groupbert.data.prepared``, anything with ``gather(indices, epoch)``): the permutation is
  a keyed Feistel network over the index space with cycle walking (Black & Rogaway, "Ciphers with
  Arbitrary Finite Domains", CT-RSA 2002), computed for each micro-batch's positions only: one global
  shuffle across all shards per epoch in O(1) memory, whatever the corpus size.
- In-memory tables (``datasets.Dataset``, e.g. SQuAD features): ``torch.randperm`` seeded with ``seed + e``.

With ``world_size`` W > 1 (torchrun, ``groupbert.training.distributed``; PopRun instances likewise) every
rank computes the same permutations and the stream of micro-batches is dealt out round-robin: global
micro-batch ``g`` goes to rank ``g mod W``. Each sequence is then seen once per epoch across the ranks, the
W ranks together draw the same micro-batches as one process would, and the position counts global
micro-batches, so a checkpoint resumes on any world size.
"""
from __future__ import annotations

import numpy as np
import torch

from groupbert.data.masking import hash_key, mix64

_ROUNDS = 6
_SHUFFLE_TAG = 0x5F1E


class FeistelPermutation:
    """A pseudo-random bijection of ``[0, n)`` keyed by integers: a balanced Feistel network on the
    smallest even number of bits that covers ``n`` (at most 4n values), re-applied to any output >= n
    until it lands inside (cycle walking, which keeps it a bijection of ``[0, n)``)."""

    def __init__(self, n: int, *key):
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n = n
        bits = max(2, int(n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = [hash_key(_SHUFFLE_TAG, *key, r) for r in range(_ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (mix64(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions) -> np.ndarray:
        x = np.asarray(positions, dtype=np.uint64)
        y = self._encrypt(x)
        outside = y >= self.n
        while outside.any():
            y[outside] = self._encrypt(y[outside])
            outside = y >= self.n
        return y.astype(np.int64)


class _Table:
    """A ``datasets.Dataset`` (or any indexable of tensors) behind the ``gather`` interface."""

    def __init__(self, dataset):
        self.dataset = dataset.with_format("torch")

    def __len__(self) -> int:
        return len(self.dataset)

    def gather(self, indices, epoch: int) -> dict:
        return self.dataset[[int(i) for i in indices]]


def _source(dataset):
    return dataset if hasattr(dataset, "gather") else _Table(dataset)


def _as_tensors(batch: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


class EpochBatches:
    def __init__(self, dataset, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.dataset = _source(dataset)
        if len(self.dataset) < batch_size:
            # rows: sequences, or packed rows with data.packing (what one micro-batch counts)
            raise ValueError(f"the training data has {len(self.dataset)} rows, fewer than one micro-batch of "
                             f"{batch_size}; use a larger corpus or a train.micro_batch_size <= {len(self.dataset)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0          # global position: the group's next micro-batch
        self._orders: dict = {}

    def __len__(self) -> int:  # full micro-batches per epoch (the remainder is dropped)
        return len(self.dataset) // self.batch_size

    def _indices(self, epoch: int, batch: int) -> np.ndarray:
        positions = np.arange(batch * self.batch_size, (batch + 1) * self.batch_size)
        if not self.shuffle:
            return positions
        if isinstance(self.dataset, _Table):
            if epoch not in self._orders:   # at most two epochs' permutations held
                g = torch.Generator().manual_seed(self.seed + epoch)
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = torch.randperm(len(self.dataset), generator=g).numpy()
            return self._orders[epoch][positions]
        if epoch not in self._orders:
            self._orders = {epoch: FeistelPermutation(len(self.dataset), self.seed, epoch)}
        return self._orders[epoch](positions)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        position = self.epoch * len(self) + self.batch
        epoch, batch = divmod(position + self.rank, len(self))  # this rank's micro-batch of the group
        out = self.dataset.gather(self._indices(epoch, batch), epoch)
        self.epoch, self.batch = divmod(position + self.world_size, len(self))
        return _as_tensors(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "batch_size": self.batch_size,
                "num_sequences": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_sequences"] != len(self.dataset) or state["batch_size"] != self.batch_size:
            raise ValueError(f"data position was saved for {state['num_sequences']} sequences in "
                             f"batches of {state['batch_size']}, but this run has {len(self.dataset)} "
                             f"in batches of {self.batch_size}")
        self.seed, self._orders = state["seed"], {}
        self.epoch, self.batch = divmod(state["epoch"] * len(self) + state["batch"], len(self))


def sequential_batches(dataset, batch_size: int, max_batches: int | None = None):
    """Evaluation order: every sequence once, in order (the last batch may be smaller); prepared data
    with dynamic masking uses the masks of epoch 0, the same at every evaluation."""
    source = _source(dataset)
    n = len(source)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield _as_tensors(source.gather(np.arange(start, min(n, start + batch_size)), 0))
