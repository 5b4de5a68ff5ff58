"""Shuffled micro-batches over a tokenised dataset, resumable at any micro-batch, shardable over ranks.

The order of epoch ``e`` is a permutation drawn from its own generator seeded with ``seed + e``, so the
position ``(epoch, batch)`` is all a checkpoint needs to continue exactly where a run stopped.

With ``world_size`` W > 1 (torchrun, ``groupbert.training.distributed``) every rank holds the same
permutations and the stream of micro-batches is dealt out round-robin: global micro-batch ``g`` goes to
rank ``g mod W``. Each sequence is then seen once per epoch across the ranks, the W ranks together draw
the same micro-batches as one process would, and the position counts global micro-batches, so a
checkpoint resumes on any world size.
"""
from __future__ import annotations

import torch


class EpochBatches:
    def __init__(self, dataset, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        if len(dataset) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} sequences, fewer than one micro-batch "
                             f"of {batch_size}; use a larger corpus or a smaller train.micro_batch_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.dataset = dataset.with_format("torch")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0          # global position: the group's next micro-batch
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:  # full micro-batches per epoch (the remainder is dropped)
        return len(self.dataset) // self.batch_size

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(n, generator=g)
            else:
                order = torch.arange(n)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # at most 2 epochs
            self._orders[epoch] = order
        return self._orders[epoch]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        position = self.epoch * len(self) + self.batch
        epoch, batch = divmod(position + self.rank, len(self))  # this rank's micro-batch of the group
        idx = self._epoch_order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        self.epoch, self.batch = divmod(position + self.world_size, len(self))
        return self.dataset[idx.tolist()]

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
    """Evaluation order: every sequence once, in order (the last batch may be smaller)."""
    dataset = dataset.with_format("torch")
    n = len(dataset)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield dataset[start:min(n, start + batch_size)]
