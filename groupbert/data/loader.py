"""Shuffled micro-batches over a tokenised dataset, resumable at any micro-batch.

The order of epoch ``e`` is a permutation drawn from its own generator seeded with ``seed + e``, so the
position ``(epoch, batch)`` is all a checkpoint needs to continue exactly where a run stopped.
"""
from __future__ import annotations

import torch


class EpochBatches:
    def __init__(self, dataset, batch_size: int, seed: int, shuffle: bool = True):
        if len(dataset) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} sequences, fewer than one micro-batch "
                             f"of {batch_size}; use a larger corpus or a smaller train.micro_batch_size")
        self.dataset = dataset.with_format("torch")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.epoch, self.batch = 0, 0
        self._order = None

    def __len__(self) -> int:  # full micro-batches per epoch (the remainder is dropped)
        return len(self.dataset) // self.batch_size

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                self._order = torch.randperm(n, generator=g)
            else:
                self._order = torch.arange(n)
        return self._order

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.batch >= len(self):
            self.epoch, self.batch, self._order = self.epoch + 1, 0, None
        idx = self._epoch_order()[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        self.batch += 1
        return self.dataset[idx.tolist()]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "batch_size": self.batch_size,
                "num_sequences": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_sequences"] != len(self.dataset) or state["batch_size"] != self.batch_size:
            raise ValueError(f"data position was saved for {state['num_sequences']} sequences in "
                             f"batches of {state['batch_size']}, but this run has {len(self.dataset)} "
                             f"in batches of {self.batch_size}")
        self.epoch, self.batch, self.seed, self._order = state["epoch"], state["batch"], state["seed"], None


def sequential_batches(dataset, batch_size: int, max_batches: int | None = None):
    """Evaluation order: every sequence once, in order (the last batch may be smaller)."""
    dataset = dataset.with_format("torch")
    n = len(dataset)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield dataset[start:min(n, start + batch_size)]
