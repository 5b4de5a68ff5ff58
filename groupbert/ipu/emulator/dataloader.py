"""``poptorch.DataLoader``: a torch ``DataLoader`` whose batches are the combined batch of one host call.

Follows graphcore/poptorch:python/__init__.py (``DataLoader``, ``_SubDataset``):

- ``batch_size`` is the micro-batch; each yielded batch holds ``batch_size x deviceIterations x
  (replicationFactor // input_group_size) x gradientAccumulation`` samples (``combinedBatchSize``), and
  ``len(loader)`` counts combined batches; ``drop_last=True`` by default;
- the options are frozen;
- with ``Distributed.numProcesses > 1`` a map-style dataset is split into contiguous per-process blocks
  (all of process 0's samples, then process 1's, ...); shuffling then needs ``options.randomSeed(N)``
  so every process draws the same permutation of the whole dataset.

``DataLoaderMode.Async`` / ``AsyncRebatched`` load in a worker process on the IPU host; the emulator
loads synchronously (same batches, same order).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch

from . import enums
from .errors import AssertError
from .options import Options

__all__ = ["DataLoader", "AsynchronousDataAccessor"]

logger = logging.getLogger(__name__)


class _SubDataset:
    """Process ``processId``'s contiguous share of ``dataset`` (optionally of a global shuffle)."""

    def __init__(self, dataset, opts: Options, step: int, drop_last: bool) -> None:
        num_elts = len(dataset)
        nproc, pid = opts.Distributed.numProcesses, opts.Distributed.processId
        if drop_last:
            per_proc = step * (num_elts // (step * nproc))
            self._offset = pid * per_proc
            self._length = min(per_proc, num_elts - self._offset)
            self._leftovers = num_elts % per_proc if per_proc else 0
        else:
            counts = [num_elts // nproc + (num_elts % nproc > p) for p in range(nproc)]
            self._offset = sum(counts[:pid])
            self._length = counts[pid]
            self._leftovers = 0
        self._base_offset = self._offset
        self._dataset = dataset
        self._seed = opts.random_seed if opts.exists("random_seed") else None
        self._generator_state = None
        self._shuffled: Optional[torch.Tensor] = None

    def shuffle_global_indices(self) -> None:
        generator = torch.Generator()
        if self._generator_state is None:
            if self._seed is None:
                raise AssertError("Seed must be set when shuffling so that all instances end up with the "
                                  "same shuffled global indices.")
            generator.manual_seed(self._seed)
        else:
            generator.set_state(self._generator_state)
        self._shuffled = torch.randperm(len(self._dataset), generator=generator)
        self._generator_state = generator.get_state()

    def swap_range(self) -> None:
        """Alternate the window so leftover samples of a shuffled epoch are used in the next one."""
        self._offset = self._offset + self._leftovers if self._offset == self._base_offset else self._base_offset

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        global_index = index + self._offset
        if self._shuffled is not None:
            global_index = int(self._shuffled[global_index])
        return self._dataset[global_index]


class DataLoader(torch.utils.data.DataLoader):
    """Thin wrapper around ``torch.utils.data.DataLoader`` that builds combined batches."""

    def __init__(self, options: Options, dataset, batch_size: Optional[int] = 1, shuffle: Optional[bool] = None,
                 num_workers: int = 0, drop_last: bool = True, persistent_workers: Optional[bool] = None,
                 auto_distributed_partitioning: bool = True,
                 mode: enums.DataLoaderMode = enums.DataLoaderMode.Sync,
                 async_options: Optional[Dict[str, Any]] = None, rebatched_worker_size: Optional[int] = None,
                 batch_sampler=None, **kwargs) -> None:
        if not isinstance(options, Options):
            raise AssertError("options must be a poptorch.Options")
        options._freeze()
        self._options = options
        shuffle = bool(shuffle)
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        if batch_size is None:
            self._combined_batch_size = None
        else:
            groups = options.replication_factor // options.input_group_size
            self._combined_batch_size = (batch_size * options.device_iterations * groups *
                                         options.Training.gradient_accumulation)
        self._shuffle_in_distributed_env = False
        nproc = options.Distributed.numProcesses
        if isinstance(dataset, torch.utils.data.IterableDataset):
            if auto_distributed_partitioning and nproc != 1:
                raise AssertError("auto_distributed_partitioning not supported for IterableDataset")
        else:
            num_elts = len(dataset)
            if not drop_last and self._combined_batch_size is not None and \
                    num_elts % (self._combined_batch_size * nproc) != 0:
                logger.warning("The number of elements in the dataset (%d) is not divisible by the number of "
                               "elements processed per step (%d) and drop_last=False. The last tensor will "
                               "have a batch size of %d. To avoid having to handle this special case switch "
                               "to drop_last=True", num_elts, self._combined_batch_size * nproc,
                               num_elts % (self._combined_batch_size * nproc))
            if nproc > 1 and auto_distributed_partitioning:
                if shuffle and not options.exists("random_seed"):
                    raise AssertError("When using auto_distributed_partitioning you must set "
                                      "poptorch.Options.randomSeed() to ensure that tensors are in the same "
                                      "order in all processes.")
                if self._combined_batch_size is None:
                    raise AssertError("batch_size=None not allowed when using auto_distributed_partitioning.")
                dataset = _SubDataset(dataset, options, self._combined_batch_size, drop_last)
                if shuffle:
                    self._shuffle_in_distributed_env = True
                    shuffle = False
        if rebatched_worker_size is not None and self._combined_batch_size is not None and \
                rebatched_worker_size > self._combined_batch_size:
            raise AssertError(f"The rebatched_worker_size ({rebatched_worker_size}) must be <= to the combined "
                              f"batch size ({self._combined_batch_size})")
        self.mode = mode
        torch_kwargs = dict(kwargs)
        if batch_sampler is not None:
            torch_kwargs["batch_sampler"] = batch_sampler
            super().__init__(dataset, num_workers=num_workers, persistent_workers=persistent_workers,
                             **torch_kwargs)
        else:
            super().__init__(dataset, batch_size=self._combined_batch_size, shuffle=shuffle,
                             num_workers=num_workers, drop_last=drop_last,
                             persistent_workers=persistent_workers, **torch_kwargs)

    @property
    def combinedBatchSize(self) -> Optional[int]:
        """Samples consumed from the dataset by one call of the model."""
        return self._combined_batch_size

    @property
    def options(self) -> Options:
        return self._options

    def terminate(self) -> None:
        """Stops the asynchronous worker on the IPU host; nothing to stop here."""

    def __iter__(self):
        if self._shuffle_in_distributed_env:
            self.dataset.shuffle_global_indices()
            self.dataset.swap_range()
        return super().__iter__()


class AsynchronousDataAccessor:
    """Iterates ``dataset`` (typically a ``poptorch.DataLoader``); PopTorch prefetches in a worker
    process into shared memory, the emulator reads synchronously."""

    def __init__(self, dataset, buffer_size: int = 3, miss_sleep_time_in_ms: float = 0.1,
                 load_indefinitely: bool = True, early_preload: bool = False,
                 sharing_strategy: enums.SharingStrategy = enums.SharingStrategy.FileSystem,
                 rebatched_size: Optional[int] = None) -> None:
        self._dataset = dataset
        self.rebatched_size = rebatched_size

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self):
        return iter(self._dataset)

    def terminate(self) -> None:
        pass
