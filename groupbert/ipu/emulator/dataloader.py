"""``poptorch.DataLoader`` and ``poptorch.AsynchronousDataAccessor`` as PopTorch 3.4 has them.

Sources (graphcore/poptorch, branch sdk-release-3.4; re-stated here, not copied):
``python/__init__.py`` (``_SubDataset``, ``_batch_sampler_len``, ``DataLoader``,
``AsynchronousDataAccessor``), ``python/_utils.py`` (``combined_batch_generator``,
``flattenTensorStructure``, ``reconstructTensorStructure``, ``combine_batch_tensors_gen``) and
``python/_dataloader.py`` (``AsynchronousWorker``, ``_AsynchronousWorkerProcess._mainLoopNoInterrupt``,
``_DataRingBufferReader``, ``_EndOfFileFlag``).

``DataLoader(options, dataset, batch_size=1, ...)``
  - ``batch_size`` is the micro-batch; a yielded batch holds ``combinedBatchSize = batch_size x
    deviceIterations x (replicationFactor // input_group_size) x gradientAccumulation`` samples (the torch
    loader's own ``batch_size``); ``drop_last=True`` by default; the options are frozen;
    ``batch_size=None`` leaves batching to the dataset and, as in PopTorch, never stores the options (so
    ``loader.options`` raises ``AttributeError``).
  - ``batch_sampler``: mutually exclusive with ``batch_size != 1`` or ``shuffle`` and, when
    ``Distributed.numProcesses > 1``, with ``auto_distributed_partitioning=True`` (``poptorch.Error``); the
    micro-batch is the sampler's ``batch_size`` attribute (1 without one); ``N = combinedBatchSize /
    micro`` consecutive sampler batches are concatenated along dim 0 into one batch, ``drop_last`` deciding
    whether an incomplete last group is yielded; ``len(loader)`` is the sampler's length (micro-batches,
    not combined batches); a warning when the sampler's length is not a multiple of ``N`` or is unknown —
    worded for ``drop_last=False`` but given whatever ``drop_last`` (PopTorch has replaced it with
    ``None`` by then).
  - map-style dataset, ``drop_last=False`` and a length that is not a multiple of ``combinedBatchSize x
    numProcesses``: warning, the last batch is short.
  - ``IterableDataset``: ``auto_distributed_partitioning`` with ``numProcesses > 1`` fails (assertion);
    ``num_workers > 1`` without a ``worker_init_fn`` warns that every element is returned
    ``num_workers`` times.
  - ``Distributed.numProcesses > 1`` (``auto_distributed_partitioning``) splits a map-style dataset into
    contiguous per-process blocks of whole combined batches (``_SubDataset``); with ``drop_last=False`` the
    blocks are as even as possible. A dataset smaller than one combined batch per process fails with
    PopTorch's ``ZeroDivisionError``. ``shuffle=True`` needs ``options.randomSeed(N)``; each ``iter()``
    draws a new permutation of the whole dataset from a generator seeded once with that seed and carried
    forward, so every process sees the same permutation of every epoch and the shares stay disjoint;
    the permutation lives in shared memory, so persistent ``num_workers > 0`` workers read each epoch's
    permutation too (the window offset that alternates between epochs to use the leftovers, a plain int,
    is not seen by persistent workers, as in PopTorch). The dataset is indexed with the permutation's
    0-d tensor elements.
  - ``mode``: ``Sync`` iterates in the calling process; ``Async`` and ``AsyncRebatched`` put an
    :class:`AsynchronousDataAccessor` inside the loader (``iter(loader)`` returns it). ``AsyncRebatched``,
    and ``Async`` with ``drop_last=False`` and ``combinedBatchSize > 1``, rebatch: the torch loader loads
    ``rebatched_worker_size`` (default ``combinedBatchSize``; asserted ``<=``) samples at a time and the
    accessor concatenates and re-cuts them into combined batches (the short tail kept iff
    ``drop_last=False``; ``len`` follows; with a ``batch_sampler`` the sampler's batches are combined first,
    honouring ``drop_last``, and PopTorch hands the accessor ``drop_last=None``, so ``len`` rounds up
    whatever ``drop_last``). ``async_options`` may not hold ``rebatched_size``.

``AsynchronousDataAccessor(dataset, buffer_size=3, ...)``
  PopTorch loads in a worker process into a ring of ``buffer_size`` shared-memory buffers allocated from
  the first element; the emulator runs that worker's algorithm in the calling process (same elements, same
  order) and keeps its observable effects:

  - it refuses a ``DataLoader`` that already has one (``poptorch.Error``); it asserts that a
    ``DataLoader(drop_last=False)`` with ``combinedBatchSize > 1`` comes with a ``rebatched_size``, and that
    ``rebatched_size`` is ``None`` or ``> 1`` — so ``AsyncRebatched`` with a combined batch size of 1 fails;
    an accessor the user builds with ``rebatched_size`` drops the short tail;
  - with a sharing strategy other than ``Fork`` the dataset must be picklable (pickle's own error);
  - the first element is loaded at construction: an empty dataset, a failing dataset or an element that is
    not a tensor, a dict of tensors or a flat sequence of tensors →
    ``poptorch.Error("AsynchronousDataAccessor worker thread failed to start ...")``;
  - elements are copied into the ring slots (``Tensor.copy_``: cast to the first element's dtype,
    broadcast to its shape); one that cannot be copied ends the worker →
    ``AssertionError("An error occurred in the data fetcher")`` when the host reaches it;
  - the returned tensors *are* the ring slots: batch ``k`` lives in slot ``k % buffer_size`` and is
    refilled once the next batch has been requested (the emulator's worker refills every freed slot at
    once, the earliest PopTorch may), so a batch kept past the next ``next()`` changes; a tuple or list
    element comes back as a ``list``;
  - ``iter()`` restarts only an epoch that was started and not finished (or any finished one with
    ``load_indefinitely=False``); after ``terminate()`` iterating fails (assertion).

  A loader's own accessor refers back to the loader strongly only during an epoch (PopTorch: always), so
  that torch's worker processes stop when the loader is dropped rather than at a garbage collection, which
  waits 5 s per worker; a loader dropped in the middle of an epoch is left to the collector (call
  ``terminate()`` to stop it at once).

  Not emulated: the separate process itself (its own torch RNG, so PopTorch's worker shuffles a
  non-distributed ``shuffle=True`` loader from that process's generator, not the caller's; prefetching
  across epochs with ``load_indefinitely``), ``miss_sleep_time_in_ms``, custom argument parsers.
"""
from __future__ import annotations

import collections
import io
import logging
import math
import pickle
import weakref
from typing import Any, Dict, List, Optional

import torch

from . import enums
from .errors import AssertError, createPoptorchError
from .options import Options

__all__ = ["DataLoader", "AsynchronousDataAccessor"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Batch combination for user batch samplers (graphcore/poptorch:python/_utils.py)
# --------------------------------------------------------------------------------------------------

def _flatten_tensors(structure) -> List[torch.Tensor]:
    """The tensors of a (nested dict / list / tuple) batch in order; other values are skipped
    (``_utils.flattenTensorStructure``)."""
    if isinstance(structure, dict):
        return [t for value in structure.values() for t in _flatten_tensors(value)]
    if isinstance(structure, (list, tuple)):
        return [t for value in structure for t in _flatten_tensors(value)]
    if isinstance(structure, torch.Tensor):
        return [structure]
    return []


def _reconstruct(structure, values):
    """``structure`` with its tensors replaced by ``values`` in order, other values copied
    (``_utils.reconstructTensorStructure``)."""
    def rebuild(x):
        if isinstance(x, dict):
            return type(x)({k: rebuild(x[k]) for k in x.keys()})
        if isinstance(x, (tuple, list)):
            if hasattr(x, "_asdict") and hasattr(x, "_fields"):
                return type(x)(*(rebuild(e) for e in x))
            return type(x)(rebuild(e) for e in x)
        if isinstance(x, torch.Tensor):
            return next(values)
        return x

    return rebuild(structure)


def _concat_batches(flat_batches: List[List[torch.Tensor]]):
    """Tensor ``i`` of every batch concatenated along dim 0 (``_utils.combine_batch_tensors_gen``)."""
    for tensor_id in range(len(flat_batches[0])):
        yield torch.cat([batch[tensor_id] for batch in flat_batches])


def _combined_batch_generator(batches, num_batches_to_combine: int, drop_last: bool):
    """Concatenates ``num_batches_to_combine`` consecutive batches (``_utils.combined_batch_generator``).

    As in PopTorch, the structure (and non-tensor values) of a combined batch are those of the last batch
    read when it is yielded, and the incomplete tail is yielded when ``drop_last`` is false.
    """
    pending: List[List[torch.Tensor]] = []
    batch = None
    for batch in batches:
        if len(pending) < num_batches_to_combine:
            pending.append(_flatten_tensors(batch))
        else:
            yield _reconstruct(batch, _concat_batches(pending))
            pending = [_flatten_tensors(batch)]
    if (pending and len(pending) == num_batches_to_combine) or not drop_last:
        yield _reconstruct(batch, _concat_batches(pending))


def _batch_sampler_len(batch_sampler) -> Optional[int]:
    """The sampler's length, or ``None`` if it has none (``__init__._batch_sampler_len``)."""
    if hasattr(batch_sampler, "__len__"):
        try:
            length = len(batch_sampler)
        except NotImplementedError:
            return None
        if length == NotImplemented:
            return None
        return length
    return None


# --------------------------------------------------------------------------------------------------
# Distributed partitioning (graphcore/poptorch:python/__init__.py _SubDataset)
# --------------------------------------------------------------------------------------------------

class _SubDataset:
    """Process ``processId``'s contiguous share of ``dataset``, optionally of a global shuffle.

    ``[p0, p0, ..., p1, p1, ..., p2, ...]``: with ``drop_last`` every process gets the same number of whole
    combined batches (``step``); otherwise the samples are spread as evenly as possible. ``_leftovers`` is
    ``len(dataset) % per_process`` as in PopTorch (a share of 0 divides by zero there too).
    """

    def __init__(self, dataset, opts: Options, step: int, drop_last: bool) -> None:
        num_elts = len(dataset)
        nproc, pid = opts.Distributed.numProcesses, opts.Distributed.processId
        if drop_last:
            per_proc = step * (num_elts // (step * nproc))
            self._offset = pid * per_proc
            self._length = min(per_proc, num_elts - self._offset)
            self._leftovers = num_elts % per_proc   # ZeroDivisionError when per_proc == 0, as in PopTorch
        else:
            counts = [num_elts // nproc + (num_elts % nproc > p) for p in range(nproc)]
            self._offset = sum(counts[:pid])
            self._length = counts[pid]
            self._leftovers = 0
        self._base_offset = self._offset
        self._dataset = dataset
        self._seed = opts.random_seed if opts.exists("random_seed") else None
        self._generator_state = None
        self._shuffled_global_indices: Optional[torch.Tensor] = None

    def shuffle_global_indices(self) -> None:
        """A new permutation of the whole dataset from the carried-forward generator, written into the
        same shared-memory tensor every epoch so that (persistent) worker processes see it."""
        generator = torch.Generator()
        if self._generator_state is None:
            if self._seed is None:
                raise AssertError("Seed must be set when shuffling so that all instances end up with the "
                                  "same shuffled global indices.")
            generator.manual_seed(self._seed)
        else:
            generator.set_state(self._generator_state)
        shuffled = torch.randperm(len(self._dataset), generator=generator)
        if self._shuffled_global_indices is None:
            self._shuffled_global_indices = shuffled.share_memory_()
        else:
            self._shuffled_global_indices.copy_(shuffled)
        self._generator_state = generator.get_state()

    def swap_range(self) -> None:
        """Alternates the window between ``[base, base+len)`` and ``[base+leftovers, ...)`` so the samples
        left over by one shuffled epoch are used in the next."""
        if self._offset == self._base_offset:
            self._offset += self._leftovers
        else:
            self._offset = self._base_offset

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        global_index = index + self._offset
        if self._shuffled_global_indices is not None:
            global_index = self._shuffled_global_indices[global_index]   # a 0-d tensor, as in PopTorch
        return self._dataset[global_index]


# --------------------------------------------------------------------------------------------------
# DataLoader (graphcore/poptorch:python/__init__.py DataLoader)
# --------------------------------------------------------------------------------------------------

class DataLoader(torch.utils.data.DataLoader):
    """Thin wrapper around ``torch.utils.data.DataLoader`` that builds combined batches."""

    def __init__(self, options: Options, dataset, batch_size: Optional[int] = 1, shuffle: Optional[bool] = None,
                 num_workers: int = 0, drop_last: bool = True, persistent_workers: Optional[bool] = None,
                 auto_distributed_partitioning: bool = True,
                 mode: enums.DataLoaderMode = enums.DataLoaderMode.Sync,
                 async_options: Optional[Dict[str, Any]] = None, rebatched_worker_size: Optional[int] = None,
                 batch_sampler=None, **kwargs) -> None:
        self._accessor: Optional[AsynchronousDataAccessor] = None
        self._is_user_batch_sampler_set = batch_sampler is not None
        if self._is_user_batch_sampler_set:
            if batch_size != 1 or shuffle:
                raise createPoptorchError("`batch_sampler` option is mutually exclusive with batch_size, shuffle.")
            if options.Distributed.numProcesses > 1 and auto_distributed_partitioning:
                raise createPoptorchError("`batch_sampler` option is mutually exclusive with "
                                          "auto_distributed_partitioning=True.")
            if hasattr(batch_sampler, "batch_size"):
                batch_size = batch_sampler.batch_size
            self.batch_sampler_drop_last = drop_last
            drop_last = None
        elif shuffle is None:
            shuffle = False

        if not isinstance(options, Options):
            raise AssertError("options must be a poptorch.Options")
        options._freeze()
        if persistent_workers is None:
            persistent_workers = num_workers > 0

        self._combined_batch_size: Optional[int]
        self._num_batches_to_combine: Optional[int]
        if batch_size is None:
            self._combined_batch_size = None
            self._num_batches_to_combine = None
        else:
            input_group_count = options.replication_factor // options.input_group_size
            self._num_batches_to_combine = (options.device_iterations * input_group_count *
                                            options.Training.gradient_accumulation)
            self._combined_batch_size = batch_size * self._num_batches_to_combine
            self._options = options   # PopTorch stores the options only here

        nproc = options.Distributed.numProcesses
        self._is_iterable = isinstance(dataset, torch.utils.data.IterableDataset)
        self._shuffle_map_style_data_in_distributed_env = False
        if self._is_iterable:
            if auto_distributed_partitioning and nproc != 1:
                raise AssertError("auto_distributed_partitioning not supported for IterableDataset")
            if num_workers > 1 and "worker_init_fn" not in kwargs:
                logger.warning("IterableDataset used with num_workers=%d but no worker_init_fn specified: as a "
                               "result the DataLoader will return %d times each element in the dataset (See "
                               "torch.utils.data.IterableDataset's documentation for more information)",
                               num_workers, num_workers)
        else:
            num_elts = len(dataset)
            if not drop_last:
                self._warn_incomplete_tail(options, num_elts, batch_sampler, batch_size)
            if nproc > 1 and auto_distributed_partitioning:
                if shuffle and not options.exists("random_seed"):
                    raise AssertError("When using auto_distributed_partitioning you must set "
                                      "poptorch.Options.randomSeed() to ensure that tensors are in the same "
                                      "order in all processes.")
                if self._combined_batch_size is None:
                    raise AssertError("batch_size=None not allowed when using auto_distributed_partitioning.")
                dataset = _SubDataset(dataset, options, self._combined_batch_size, drop_last)
                if shuffle:
                    # the global shuffle is done by _SubDataset in __iter__, not by torch's sampler
                    self._shuffle_map_style_data_in_distributed_env = True
                    shuffle = False

        rebatched_size = None
        dataset_batch_size = 1 if self._is_user_batch_sampler_set else self._combined_batch_size
        real_drop_last = self.batch_sampler_drop_last if self._is_user_batch_sampler_set else drop_last
        cbs_is_gt_one = self._combined_batch_size is not None and self._combined_batch_size > 1
        async_mode_with_remainder = mode == enums.DataLoaderMode.Async and not real_drop_last and cbs_is_gt_one
        if mode == enums.DataLoaderMode.AsyncRebatched or async_mode_with_remainder:
            mode = enums.DataLoaderMode.Async
            rebatched_size = self._combined_batch_size
            # the accessor handles the leftovers instead of torch's loader
            self.rebatched_drop_last = drop_last
            drop_last = False
            if rebatched_worker_size is not None:
                if not rebatched_worker_size <= self._combined_batch_size:
                    raise AssertError(f"The rebatched_worker_size ({rebatched_worker_size}) must be <= to the "
                                      f"combined batch size ({self._combined_batch_size})")
                dataset_batch_size = rebatched_worker_size
        self.mode = mode

        super().__init__(dataset, batch_size=dataset_batch_size, shuffle=shuffle, batch_sampler=batch_sampler,
                         num_workers=num_workers, drop_last=drop_last, persistent_workers=persistent_workers,
                         **kwargs)

        if mode == enums.DataLoaderMode.Async:
            async_options = async_options or {}
            if "rebatched_size" in async_options:
                raise AssertError("You cannot use DataLoaderMode.AsyncRebatched and manually specify the "
                                  "rebatched_size in async_options")
            self._accessor = AsynchronousDataAccessor(self, **async_options, rebatched_size=rebatched_size)
            self._accessor._hold_weakly()

    def _warn_incomplete_tail(self, options: Options, num_elts: int, batch_sampler, batch_size) -> None:
        """PopTorch's warnings for ``drop_last=False`` when the last combined batch will be short."""
        if self._is_user_batch_sampler_set:
            sampler_len = _batch_sampler_len(batch_sampler)
            if sampler_len is None:
                logger.warning("The `batch_sampler` __len__ method is not implemented and drop_last=False. The "
                               "last tensor may be incomplete - batch size < %d. To avoid having to handle this "
                               "special case switch to drop_last=True.", self._num_batches_to_combine)
            elif sampler_len % self._num_batches_to_combine != 0:
                incomplete = sampler_len % self._num_batches_to_combine
                logger.warning("The number of batches generated by the batch sampler (%d) is not divisible by "
                               "the number of batches elements processed per step (%d) and drop_last=False. "
                               "The last tensor will have a batch size of %d. To avoid having to  handle this "
                               "special case switch to  drop_last=True. Batch size = %d, combined batch size "
                               "= %d .", sampler_len, self._num_batches_to_combine, incomplete * batch_size,
                               batch_size, self._combined_batch_size)
        elif self._combined_batch_size is not None:
            per_step = self._combined_batch_size * options.Distributed.numProcesses
            if num_elts % per_step != 0:
                logger.warning("The number of elements in the dataset (%d) is not divisible by the number of "
                               "elements processed per step (%d) and drop_last=False. The last tensor will "
                               "have a batch size of %d. To avoid having to handle this special case switch "
                               "to drop_last=True", num_elts, per_step, num_elts % per_step)

    def __len__(self) -> int:
        if self._accessor is not None and self._accessor.rebatched_size:
            num_elts = len(self.dataset)
            dataset_len = num_elts // self._accessor.rebatched_size
            if not self.rebatched_drop_last and num_elts % self._accessor.rebatched_size:
                dataset_len += 1
            return dataset_len
        return super().__len__()

    @property
    def combinedBatchSize(self) -> Optional[int]:
        """Samples consumed from the dataset by one call of the model."""
        return self._combined_batch_size

    @property
    def options(self) -> Options:
        """The options the loader was built with (``AttributeError`` with ``batch_size=None``, as in PopTorch)."""
        return self._options

    def terminate(self) -> None:
        """Stops the asynchronous accessor (Async modes); afterwards the loader can no longer be iterated."""
        accessor = self.__dict__.get("_accessor")
        if accessor is not None:
            accessor.terminate()

    def __del__(self) -> None:
        self.terminate()

    def _sync_iter(self):
        """What PopTorch's worker process iterates: the batches of one epoch, in this process."""
        if self._shuffle_map_style_data_in_distributed_env:
            self.dataset.shuffle_global_indices()
            self.dataset.swap_range()
        if self._is_user_batch_sampler_set and self._num_batches_to_combine != 1:
            return _combined_batch_generator(super().__iter__(), self._num_batches_to_combine,
                                             self.batch_sampler_drop_last)
        return super().__iter__()

    def __iter__(self):
        if self._accessor is not None:
            return self._accessor.__iter__()
        return self._sync_iter()


# --------------------------------------------------------------------------------------------------
# AsynchronousDataAccessor (graphcore/poptorch:python/__init__.py, python/_dataloader.py)
# --------------------------------------------------------------------------------------------------

class _NullSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return len(b)


class _PicklabilityCheck(pickle.Pickler):
    """Pickles to nowhere; tensors and storages are not serialised (PopTorch's ``ForkServer`` strategy
    moves them to shared memory, ``FileSystem`` writes them to a file)."""

    def reducer_override(self, obj):
        if isinstance(obj, (torch.Tensor, torch.UntypedStorage, torch.TypedStorage, torch.Generator)):
            return (tuple, ())
        return NotImplemented


class _EmulatedWorker:
    """``_dataloader.AsynchronousWorker`` + ``_AsynchronousWorkerProcess`` run in the calling process.

    The ring: ``buffer_size`` slots, each a list of tensors allocated from the first element
    (``[rebatched_size, ...]`` when rebatching); the writer fills slots in ring order while they are free,
    the reader locks one slot at a time and frees it on the next ``next()``.
    """

    def __init__(self, dataset, buffer_size: int, load_indefinitely: bool, early_preload: bool,
                 sharing_strategy, rebatched_size: Optional[int]) -> None:
        self._dataset = dataset
        self._buffer_size = buffer_size
        self.load_indefinitely = load_indefinitely
        self._rebatched_size = rebatched_size
        self._rebatched_drop_last = getattr(dataset, "rebatched_drop_last", True)
        self._ready: collections.deque = collections.deque()   # (slot, left_over rows or 0)
        self._write_slot = 0
        self._locked: Optional[int] = None
        self._next_batch_idx = 0
        self._rebatch_leftover: List[torch.Tensor] = []
        self._eof = False
        self._error: Optional[BaseException] = None
        self._worker_started = False
        self._was_used = False
        if sharing_strategy != enums.SharingStrategy.Fork:
            # the dataset travels to the worker process by pickling; errors surface here, unchanged
            _PicklabilityCheck(_NullSink(), protocol=4).dump(dataset)
        try:
            self._iterator = self._new_iterator()
            first = None
            try:
                first = next(self._iterator)
            except StopIteration:
                pass
            if first is None:
                raise createPoptorchError("The Dataset is empty")
            self._is_single_tensor = isinstance(first, torch.Tensor)
            self._dict_keys = list(first.keys()) if isinstance(first, dict) else []
            flat = self._as_tuple(first)
            data_length = len(flat)
            self._slots: List[List[Optional[torch.Tensor]]] = [[None] * data_length for _ in range(buffer_size)]
            for index, tensor in enumerate(flat):
                if not isinstance(tensor, torch.Tensor):
                    raise AssertError(f"Tensor at index {index} is not a torch tensor ({type(tensor)}). "
                                      "AsynchronousDataAccessor expects data to be organised as a flat 1D "
                                      "container of tensors.")
                size = list(tensor.size())
                if rebatched_size and size[0] != rebatched_size:
                    tensor = tensor.repeat(math.ceil(rebatched_size / size[0]),
                                           *[1] * (len(size) - 1))[:rebatched_size]
                    size[0] = rebatched_size
                memory = tensor.expand(buffer_size, *size).clone().contiguous()
                for slot in range(buffer_size):
                    self._slots[slot][index] = memory[slot]
            self._write(flat)
        except Exception as exc:
            logger.error("AsynchronousDataAccessor worker: %s: %s", type(exc).__name__, exc)
            raise createPoptorchError("AsynchronousDataAccessor worker thread failed to start "
                                      "(Check above for details)") from exc
        if early_preload:
            self._fill()

    def _new_iterator(self):
        if isinstance(self._dataset, DataLoader):
            return self._dataset._sync_iter()   # the worker's copy of the loader has no accessor
        return iter(self._dataset)

    def _as_tuple(self, data):
        if isinstance(data, torch.Tensor):
            return (data,)
        if isinstance(data, dict):   # the keys must be those of the first element
            if len(data) != len(self._dict_keys):
                raise AssertError("")
            return tuple(data[k] for k in self._dict_keys)
        return data

    def _slot_is_free(self, slot: int) -> bool:
        return slot != self._locked and all(slot != s for s, _ in self._ready)

    def _complete_write(self, left_over: int = 0) -> None:
        self._ready.append((self._write_slot, left_over))
        self._write_slot = (self._write_slot + 1) % self._buffer_size

    def _write(self, data) -> None:
        """Copies one element into the current slot (``copy_``: cast and broadcast)."""
        slot = self._slots[self._write_slot]
        if self._rebatched_size:
            copy_size = 0
            for index, tensor in enumerate(data):
                in_size = len(tensor)
                out_size = self._rebatched_size - self._next_batch_idx
                copy_size = min(in_size, out_size)
                if in_size > out_size:
                    self._rebatch_leftover.append(tensor[copy_size:])
                slot[index][self._next_batch_idx:self._next_batch_idx + copy_size].copy_(tensor[:copy_size])
            self._next_batch_idx += copy_size
            if self._next_batch_idx == self._rebatched_size:
                self._next_batch_idx = 0
                self._complete_write()
        else:
            for index, tensor in enumerate(data):
                slot[index].copy_(tensor)
            self._complete_write()

    def _fill(self) -> None:
        """The worker's loop: fill every free slot until the end of the epoch or an error."""
        while not self._eof and self._error is None and self._slot_is_free(self._write_slot):
            if self._rebatch_leftover:
                data, self._rebatch_leftover = self._rebatch_leftover, []
            else:
                try:
                    data = self._as_tuple(next(self._iterator))
                except StopIteration:
                    self._eof = True
                    if self._rebatched_size and not self._rebatched_drop_last and self._next_batch_idx != 0:
                        self._complete_write(self._next_batch_idx)
                    self._next_batch_idx = 0
                    return
                except Exception as exc:   # the worker process dies
                    self._fail(exc)
                    return
            try:
                self._write(data)
            except Exception as exc:
                self._fail(exc)
                return

    def _fail(self, exc: BaseException) -> None:
        logger.error("AsynchronousDataAccessor worker: %s: %s", type(exc).__name__, exc)
        self._error = exc

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise AssertError("An error occurred in the data fetcher") from self._error

    def reset_iterator(self) -> None:
        """``AsynchronousWorker.resetIterator``."""
        self._raise_if_dead()
        if self._worker_started and not self._was_used:
            return
        if self._was_used:
            finished = self._eof and not self._ready
            self._locked = None
            self._rebatch_leftover = []
            self._next_batch_idx = 0
            self._eof = False
            self._iterator = self._new_iterator()
            if not (finished and self.load_indefinitely):
                self._ready.clear()     # PopTorch resets the ring to slot 0
                self._write_slot = 0
        self._was_used = False
        self._worker_started = True

    def next_element(self):
        self._locked = None   # release the previous element: the writer may now refill its slot
        self._fill()
        if not self._ready:
            self._raise_if_dead()
            raise StopIteration
        slot, left_over = self._ready.popleft()
        self._locked = slot
        self._was_used = True
        data = list(self._slots[slot])
        if left_over > 0:
            data = [d.narrow(0, 0, left_over) for d in data]
        if self._is_single_tensor:
            return data[0]
        if self._dict_keys:
            return dict(zip(self._dict_keys, data))
        return data


class AsynchronousDataAccessor:
    """Iterates ``dataset`` (typically a ``poptorch.DataLoader``) as PopTorch's asynchronous worker does
    (see the module docstring for what is kept of the worker process)."""

    def __init__(self, dataset, buffer_size: int = 3, miss_sleep_time_in_ms: float = 0.1,
                 load_indefinitely: bool = True, early_preload: bool = False,
                 sharing_strategy: enums.SharingStrategy = enums.SharingStrategy.ForkServer,
                 rebatched_size: Optional[int] = None) -> None:
        self._worker = None
        self._owner: Optional[weakref.ref] = None
        self._pinned_owner = None
        if isinstance(dataset, DataLoader) and dataset._accessor is not None:
            raise createPoptorchError("The DataLoader already uses an AsynchronousDataAccessor internally. Either "
                                      "use the existing one or set mode='poptorch.DataLoaderMode.Sync' in the "
                                      "DataLoader.")
        if isinstance(dataset, DataLoader) and not dataset._is_user_batch_sampler_set and \
                not dataset.drop_last and rebatched_size is None:
            if not (dataset.combinedBatchSize is None or dataset.combinedBatchSize == 1):
                raise AssertError("The 'drop_last=False' option from the DataLoader only works if "
                                  "'rebatched_size' is specified too.")
        if rebatched_size is not None and not rebatched_size > 1:
            raise AssertError("rebatched_size must be None or greater than 1")
        self._dataset = dataset
        self.rebatched_size = rebatched_size
        self._worker = _EmulatedWorker(dataset, buffer_size, load_indefinitely, early_preload,
                                       sharing_strategy, rebatched_size)

    def _hold_weakly(self) -> None:
        """Called by the owning ``DataLoader``: refer to it weakly, except during an epoch.

        In PopTorch the accessor refers to its loader and the loader to its accessor; the loading itself runs
        in the worker process. Here the loading runs in this process, and such a reference cycle would leave
        torch's worker processes to the garbage collector, whose shutdown of them waits 5 s per worker. So the
        accessor holds its loader strongly only from ``iter()`` to the end of the epoch (what keeps
        ``for batch in poptorch.DataLoader(..., mode=Async)`` working) and weakly otherwise.
        """
        self._owner = weakref.ref(self._dataset)
        self._dataset = weakref.proxy(self._dataset)
        self._worker._dataset = self._dataset

    def terminate(self) -> None:
        """Stops the worker (and, for a loader's own accessor, torch's worker processes that the PopTorch worker
        process owned); the accessor can no longer be iterated."""
        self._worker = None
        self._pinned_owner = None
        owner = self._owner() if self._owner is not None else None
        if owner is not None and owner.__dict__.get("_iterator") is not None:
            owner._iterator = None

    def __del__(self) -> None:
        self.terminate()

    def __len__(self) -> int:
        dataset_len = len(self._dataset)
        if self.rebatched_size and getattr(self._dataset, "_accessor", None) != self:
            num_elts = dataset_len * self._dataset.batch_size
            dataset_len = num_elts // self.rebatched_size
        return dataset_len

    def __iter__(self) -> "AsynchronousDataAccessor":
        if self._worker is None:
            raise AssertError("")
        self._worker.reset_iterator()
        if self._owner is not None:
            self._pinned_owner = self._owner()
        return self

    def __next__(self) -> Any:
        if self._worker is None:
            raise AssertError("")
        try:
            return self._worker.next_element()
        except StopIteration:
            self._pinned_owner = None
            raise
