"""poptorch.DataLoader / AsynchronousDataAccessor against PopTorch 3.4's source (graphcore/poptorch,
branch sdk-release-3.4): ``python/__init__.py`` (``DataLoader``, ``_SubDataset``,
``AsynchronousDataAccessor``), ``python/_utils.py`` (``combined_batch_generator``) and
``python/_dataloader.py`` (the asynchronous worker), and its ``tests/dataloader_test.py``.

Datasets, samplers and functions are module-level: Async modes pickle the loader, as PopTorch does.
"""
import collections
import logging
import math
import pickle

import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)

Pair = collections.namedtuple("Pair", ["x", "y"])


class Inc(torch.utils.data.Dataset):
    """Element ``i`` is ``tensor([i])``."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)])


class IndexTypes(Inc):
    """Records the type of every index it is given."""

    def __init__(self, n):
        super().__init__(n)
        self.seen = []

    def __getitem__(self, i):
        self.seen.append(type(i))
        return super().__getitem__(int(i))


class PairDataset(Inc):
    def __getitem__(self, i):
        return Pair(torch.tensor([float(i)]), torch.tensor([float(-i)]))


class Empty(Inc):
    def __init__(self):
        super().__init__(0)


class Broken(Inc):
    def __getitem__(self, i):
        raise ValueError("Broken dataset")


class Nested(Inc):
    def __getitem__(self, i):
        return torch.tensor([float(i)]), (torch.tensor([1.0]), torch.tensor([2.0]))


class IncIterable(torch.utils.data.IterableDataset):
    """``tensor([start + i])`` for ``i < length``; ``__len__`` as in PopTorch's
    ``IncrementIterableDatasetWithLen``."""

    def __init__(self, length, start=0):
        self.length, self.start = length, start

    def __len__(self):
        return self.length

    def __iter__(self):
        for i in range(self.length):
            yield torch.tensor([float(self.start + i)])


class GrowingIterable(torch.utils.data.IterableDataset):
    """Elements of 4, then 5 values: the second does not fit buffers shaped by the first."""

    def __iter__(self):
        yield torch.arange(4)
        yield torch.arange(5)


class CastIterable(torch.utils.data.IterableDataset):
    """A float32 element, then an int64 one."""

    def __iter__(self):
        yield torch.tensor([0.5, 1.5])
        yield torch.tensor([2, 3])


class PairSampler:
    """Batches of two indices, with no ``batch_size`` attribute and no ``__len__``."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(0, self.n - 1, 2):
            yield [i, i + 1]


def _split_worker_init_fn(worker_id):
    """PopTorch's ``tests/dataloader_test.py _worker_init_fn``: each worker reads a contiguous part."""
    info = torch.utils.data.get_worker_info()
    dataset, total = info.dataset, info.dataset.length
    per_worker = math.ceil(total / info.num_workers)
    dataset.start = per_worker * worker_id
    dataset.length = per_worker if worker_id < info.num_workers - 1 else total - per_worker * (info.num_workers - 1)


def _first_element(collate_input):
    return collate_input[0]


def _values(batches):
    return [b.squeeze(-1).tolist() for b in batches]


def _batch_sampler(n, batch_size, drop_last=False):
    return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(n)), batch_size=batch_size,
                                         drop_last=drop_last)


# ------------------------------------------------------------------------------------------------
# batch_sampler
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop_last", [True, False])
def test_batch_sampler_batches_are_combined(drop_last):
    """``DataLoader.__init__``: the micro-batch is ``batch_sampler.batch_size``, combinedBatchSize = micro x
    DI x replicas x GA; ``DataLoader.__iter__`` + ``_utils.combined_batch_generator`` concatenate that many
    consecutive sampler batches, the incomplete last group kept iff ``drop_last=False``; ``__len__`` is
    ``len(batch_sampler)`` (tests/dataloader_test.py ``test_batch_sampler_basic``)."""
    opts = poptorch.Options().deviceIterations(2)
    opts.Training.gradientAccumulation(2)
    loader = poptorch.DataLoader(opts, Inc(22), batch_sampler=_batch_sampler(22, 2), drop_last=drop_last)
    assert loader.combinedBatchSize == 8
    assert len(loader) == 11
    expected = [list(map(float, range(0, 8))), list(map(float, range(8, 16)))]
    if not drop_last:
        expected.append(list(map(float, range(16, 22))))
    assert _values(loader) == expected
    assert _values(loader) == expected   # every epoch


def test_batch_sampler_without_batch_size_attribute_combines_its_batches():
    """``DataLoader.__init__``: without a ``batch_size`` attribute the micro-batch stays 1, so
    combinedBatchSize = DI x replicas x GA = the number of sampler batches combined."""
    loader = poptorch.DataLoader(poptorch.Options().deviceIterations(3), Inc(12), batch_sampler=PairSampler(12))
    assert loader.combinedBatchSize == 3
    assert [len(b) for b in loader] == [6, 6]


@pytest.mark.parametrize("kwargs", [{"batch_size": 2}, {"shuffle": True}, {"batch_size": None}])
def test_batch_sampler_is_exclusive_with_batch_size_and_shuffle(kwargs):
    """``DataLoader.__init__``: ``createPoptorchError('`batch_sampler` option is mutually exclusive with
    batch_size, shuffle.')`` when ``batch_size != 1`` or ``shuffle``."""
    with pytest.raises(poptorch.Error, match="`batch_sampler` option is mutually exclusive with batch_size, shuffle."):
        poptorch.DataLoader(poptorch.Options(), Inc(8), batch_sampler=_batch_sampler(8, 2), **kwargs)


def test_batch_sampler_is_exclusive_with_auto_distributed_partitioning():
    """``DataLoader.__init__``: with ``Distributed.numProcesses > 1`` a batch sampler needs
    ``auto_distributed_partitioning=False`` (``poptorch.Error``); then every process reads the sampler's
    batches unpartitioned."""
    opts = poptorch.Options()
    opts.Distributed.configureProcessId(1, 2)
    with pytest.raises(poptorch.Error, match="exclusive with auto_distributed_partitioning=True"):
        poptorch.DataLoader(opts, Inc(8), batch_sampler=_batch_sampler(8, 2))
    loader = poptorch.DataLoader(opts, Inc(8), batch_sampler=_batch_sampler(8, 2),
                                 auto_distributed_partitioning=False)
    assert _values(loader) == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sampler_drop_last_false_warnings(caplog, drop_last):
    """``DataLoader.__init__``: a sampler length that is not a multiple of the batches combined, or a
    sampler without ``__len__``, is warned about in the batch sampler's terms. The check is
    ``if not drop_last`` after ``drop_last = None`` has replaced the user's value, so it warns (worded for
    ``drop_last=False``) whatever ``drop_last``."""
    with caplog.at_level(logging.WARNING):
        poptorch.DataLoader(poptorch.Options().deviceIterations(4), Inc(10), batch_sampler=_batch_sampler(10, 2),
                            drop_last=drop_last)
    assert "The number of batches generated by the batch sampler (5) is not divisible by the number of " \
           "batches elements processed per step (4)" in caplog.text
    assert "will have a batch size of 2." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        poptorch.DataLoader(poptorch.Options().deviceIterations(4), Inc(10), batch_sampler=PairSampler(10),
                            drop_last=drop_last)
    assert "The `batch_sampler` __len__ method is not implemented and drop_last=False. The last tensor may be " \
           "incomplete - batch size < 4." in caplog.text


# ------------------------------------------------------------------------------------------------
# distributed (PopRun instances)
# ------------------------------------------------------------------------------------------------

def _process_epochs(pid, nproc, num_workers, epochs=3, n=38):
    opts = poptorch.Options().randomSeed(7)
    opts.Distributed.configureProcessId(pid, nproc)
    loader = poptorch.DataLoader(opts, Inc(n), batch_size=4, shuffle=True, num_workers=num_workers)
    return [sorted(int(v) for b in loader for v in b.flatten()) for _ in range(epochs)]


def test_distributed_shuffle_changes_every_epoch_with_persistent_workers():
    """``_SubDataset.shuffle_global_indices``: each ``iter()`` draws the next permutation of the whole dataset
    from one generator seeded with ``randomSeed`` and writes it into the same shared-memory tensor
    (``share_memory_()`` then ``copy_``), so persistent ``num_workers > 0`` workers see every epoch's
    permutation: the epochs differ and the processes' shares are disjoint in each
    (tests/dataloader_test.py ``test_global_shuffle_each_epoch``)."""
    per_process = [_process_epochs(pid, 2, num_workers=1) for pid in range(2)]
    for epochs in per_process:
        assert len({tuple(e) for e in epochs}) == 3            # a new shuffle every epoch
    for epoch in range(3):
        share0, share1 = per_process[0][epoch], per_process[1][epoch]
        assert len(share0) == len(share1) == 16 and not set(share0) & set(share1)
    assert per_process[0][0] == _process_epochs(0, 2, num_workers=0, epochs=1)[0]


def test_distributed_shuffle_indexes_the_dataset_with_tensor_elements():
    """``_SubDataset.__getitem__``: a shuffled index is an element of the permutation tensor (a 0-d tensor),
    which is what the user's dataset receives."""
    opts = poptorch.Options().randomSeed(1)
    opts.Distributed.configureProcessId(0, 2)
    dataset = IndexTypes(8)
    list(poptorch.DataLoader(opts, dataset, batch_size=2, shuffle=True))
    assert dataset.seen and all(t is torch.Tensor for t in dataset.seen)


def test_distributed_dataset_smaller_than_a_combined_batch_per_process():
    """``_SubDataset.__init__`` with ``drop_last``: a per-process share of 0 samples makes
    ``len(dataset) % per_proc`` divide by zero."""
    opts = poptorch.Options().deviceIterations(4)
    opts.Distributed.configureProcessId(0, 2)
    with pytest.raises(ZeroDivisionError):
        poptorch.DataLoader(opts, Inc(6), batch_size=1)


# ------------------------------------------------------------------------------------------------
# mode and the asynchronous accessor
# ------------------------------------------------------------------------------------------------

def test_async_loader_owns_its_accessor():
    """``DataLoader.__init__`` (``mode=Async``) builds an ``AsynchronousDataAccessor`` that ``__iter__``
    returns; ``AsynchronousDataAccessor.__init__`` refuses a loader that already has one."""
    loader = poptorch.DataLoader(poptorch.Options(), Inc(4), mode=poptorch.DataLoaderMode.Async)
    assert isinstance(iter(loader), poptorch.AsynchronousDataAccessor)
    with pytest.raises(poptorch.Error, match="The DataLoader already uses an AsynchronousDataAccessor internally. "
                                             "Either use the existing one or set "
                                             "mode='poptorch.DataLoaderMode.Sync' in the DataLoader."):
        poptorch.AsynchronousDataAccessor(loader)


def test_rebatching_needs_a_combined_batch_size_above_one():
    """``AsynchronousDataAccessor.__init__`` asserts ``rebatched_size > 1``; ``AsyncRebatched`` passes the
    combined batch size, so a combined batch size of 1 fails."""
    with pytest.raises(AssertionError, match="rebatched_size must be None or greater than 1"):
        poptorch.DataLoader(poptorch.Options(), Inc(4), mode=poptorch.DataLoaderMode.AsyncRebatched)
    with pytest.raises(AssertionError, match="rebatched_size must be None or greater than 1"):
        poptorch.AsynchronousDataAccessor(Inc(4), rebatched_size=1)


def test_accessor_refuses_a_drop_last_false_loader_without_rebatching():
    """``AsynchronousDataAccessor.__init__``: a ``DataLoader(drop_last=False)`` with combinedBatchSize > 1
    needs ``rebatched_size``, and the accessor then drops the short tail (its docstring's note); the loader's
    own ``Async`` mode rebatches it instead, keeping the tail."""
    loader = poptorch.DataLoader(poptorch.Options().deviceIterations(2), Inc(5), drop_last=False)
    with pytest.raises(AssertionError, match="The 'drop_last=False' option from the DataLoader only works if "
                                             "'rebatched_size' is specified too."):
        poptorch.AsynchronousDataAccessor(loader)
    # a user's accessor drops the rebatched tail (``rebatched_drop_last`` defaults to True)
    assert _values(poptorch.AsynchronousDataAccessor(loader, rebatched_size=2)) == [[0.0, 1.0], [2.0, 3.0]]
    async_loader = poptorch.DataLoader(poptorch.Options().deviceIterations(2), Inc(5), drop_last=False,
                                       mode=poptorch.DataLoaderMode.Async)
    assert len(async_loader) == 3 and _values(async_loader) == [[0.0, 1.0], [2.0, 3.0], [4.0]]


def test_async_options_may_not_set_rebatched_size():
    """``DataLoader.__init__``: ``"rebatched_size" in async_options`` is an assertion."""
    with pytest.raises(AssertionError, match="You cannot use DataLoaderMode.AsyncRebatched and manually specify "
                                             "the rebatched_size in async_options"):
        poptorch.DataLoader(poptorch.Options().deviceIterations(2), Inc(4), mode=poptorch.DataLoaderMode.Async,
                            async_options={"rebatched_size": 2})


def test_rebatched_worker_size_is_checked_only_when_rebatching():
    """``DataLoader.__init__`` checks ``rebatched_worker_size <= combinedBatchSize`` in the rebatching branch
    only; ``Sync`` ignores it."""
    opts = poptorch.Options().deviceIterations(2)
    loader = poptorch.DataLoader(opts, Inc(4), rebatched_worker_size=100)
    assert _values(loader) == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(AssertionError, match=r"The rebatched_worker_size \(100\) must be <= to the combined batch "
                                             r"size \(2\)"):
        poptorch.DataLoader(poptorch.Options().deviceIterations(2), Inc(4), rebatched_worker_size=100,
                            mode=poptorch.DataLoaderMode.AsyncRebatched)


@pytest.mark.parametrize("rebatched_worker_size", [None, 1])
def test_async_rebatched_fills_batches_across_workers(rebatched_worker_size):
    """``DataLoaderMode.AsyncRebatched`` (``python/enums.py``; ``_AsynchronousWorkerProcess``'s rebatching):
    the worker process concatenates what the torch workers load and cuts it into combined batches, so an
    iterable dataset split over workers loses only the global remainder, and ``len`` is
    ``len(dataset) // combinedBatchSize`` (tests/dataloader_test.py ``test_iterable_dataloader_drop_last``,
    ``test_rebatched_worker_size``)."""
    loader = poptorch.DataLoader(poptorch.Options(), IncIterable(21), batch_size=4, num_workers=2,
                                 worker_init_fn=_split_worker_init_fn, rebatched_worker_size=rebatched_worker_size,
                                 mode=poptorch.DataLoaderMode.AsyncRebatched)
    assert len(loader) == 5
    for _ in range(2):
        batches = [b.clone() for b in loader]
        assert [len(b) for b in batches] == [4] * 5
        values = torch.cat(batches).flatten().tolist()
        assert len(set(values)) == 20 and set(values) <= set(map(float, range(21)))


def test_async_batches_are_the_ring_buffer_slots():
    """``AsynchronousDataAccessor`` docstring ("The memory is shared so will be used in-place and won't be
    freed until the next batch is requested") and ``_DataRingBufferReader.lock``: batch ``k`` is ring slot
    ``k % buffer_size``, so batches kept in a list alias each other; a tuple element comes back as a list."""
    loader = poptorch.DataLoader(poptorch.Options(), PairDataset(8), mode=poptorch.DataLoaderMode.Async,
                                 async_options={"buffer_size": 3})
    batches = list(loader)
    assert all(type(b) is list for b in batches)
    assert batches[0][0].data_ptr() == batches[3][0].data_ptr() == batches[6][0].data_ptr()
    assert torch.equal(batches[0][0], batches[3][0])
    assert [float(b[0]) for b in loader] == list(map(float, range(8)))   # read at once, each batch is right


def test_accessor_worker_that_cannot_start():
    """``_AsynchronousWorkerProcess._start`` / ``_mainLoopNoInterrupt``: the first element is loaded when the
    accessor is built; an empty dataset ("The Dataset is empty"), a failing one or an element that is not a
    flat container of tensors stops the worker → ``poptorch.Error("AsynchronousDataAccessor worker thread
    failed to start (Check above for details)")`` (tests/dataloader_test.py ``test_broken_dataset``)."""
    for dataset in (Empty(), Broken(4), Nested(4)):
        with pytest.raises(poptorch.Error, match=r"AsynchronousDataAccessor worker thread failed to start "
                                                 r"\(Check above for details\)"):
            poptorch.DataLoader(poptorch.Options(), dataset, batch_size=None, drop_last=False,
                                mode=poptorch.DataLoaderMode.Async)


def test_accessor_elements_are_copied_into_buffers_shaped_by_the_first():
    """``_mainLoopNoInterrupt``: every element is ``copy_``-ed into buffers allocated from the first one
    (cast to its dtype); one that cannot be copied kills the worker and the host's ``assertNoError`` raises
    "An error occurred in the data fetcher" when it reaches it."""
    loader = poptorch.DataLoader(poptorch.Options(), CastIterable(), batch_size=None, drop_last=False,
                                 mode=poptorch.DataLoaderMode.Async)
    assert [b.dtype for b in loader] == [torch.float32, torch.float32]
    accessor = poptorch.AsynchronousDataAccessor(GrowingIterable())
    it = iter(accessor)
    assert next(it).tolist() == [0, 1, 2, 3]
    with pytest.raises(AssertionError, match="An error occurred in the data fetcher"):
        next(it)


def test_accessor_pickles_the_dataset_unless_forking():
    """``_AsynchronousWorkerProcess.start``: with the default ``SharingStrategy.ForkServer`` (and
    ``SharedMemory``, ``FileSystem``) the loader is pickled to reach the worker process, so a lambda
    ``collate_fn`` fails; ``SharingStrategy.Fork`` does not pickle."""
    with pytest.raises((pickle.PicklingError, AttributeError), match="[Cc]an't pickle"):
        poptorch.DataLoader(poptorch.Options(), Inc(4), collate_fn=lambda b: b[0], mode=poptorch.DataLoaderMode.Async)
    loader = poptorch.DataLoader(poptorch.Options(), Inc(4), collate_fn=lambda b: b[0],
                                 mode=poptorch.DataLoaderMode.Async,
                                 async_options={"sharing_strategy": poptorch.SharingStrategy.Fork})
    assert [float(b) for b in loader] == [0.0, 1.0, 2.0, 3.0]


def test_terminated_loader_cannot_be_iterated():
    """``DataLoader.terminate`` → ``AsynchronousDataAccessor.terminate`` drops the worker; ``__iter__`` then
    asserts ``self._worker is not None``. (An unnamed loader iterated in a ``for`` stays alive for the epoch:
    in PopTorch its accessor refers back to it.)"""
    assert [float(b) for b in poptorch.DataLoader(poptorch.Options(), Inc(4), mode=poptorch.DataLoaderMode.Async)] \
        == [0.0, 1.0, 2.0, 3.0]
    loader = poptorch.DataLoader(poptorch.Options(), Inc(4), mode=poptorch.DataLoaderMode.Async)
    loader.terminate()
    with pytest.raises(AssertionError):
        iter(loader)


def test_accessor_len_of_a_rebatched_loader():
    """``AsynchronousDataAccessor.__len__``: around a loader it does not belong to, with ``rebatched_size``,
    the length is ``len(loader) * loader.batch_size // rebatched_size``."""
    loader = poptorch.DataLoader(poptorch.Options(), Inc(10), batch_size=2)
    accessor = poptorch.AsynchronousDataAccessor(loader, rebatched_size=4)
    assert len(accessor) == 2
    assert _values(accessor) == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


# ------------------------------------------------------------------------------------------------
# other DataLoader behaviour
# ------------------------------------------------------------------------------------------------

def test_iterable_dataset_with_workers_and_no_worker_init_fn_warns(caplog):
    """``DataLoader.__init__``: an ``IterableDataset`` with ``num_workers > 1`` and no ``worker_init_fn``
    returns each element ``num_workers`` times, which PopTorch warns about."""
    with caplog.at_level(logging.WARNING):
        poptorch.DataLoader(poptorch.Options(), IncIterable(4), num_workers=2)
    assert "IterableDataset used with num_workers=2 but no worker_init_fn specified: as a result the " \
           "DataLoader will return 2 times each element in the dataset" in caplog.text


def test_batch_size_none_loader_keeps_no_options():
    """``DataLoader.__init__`` stores ``self._options`` only when ``batch_size`` is not None, so the
    ``options`` property raises ``AttributeError`` for ``batch_size=None``."""
    loader = poptorch.DataLoader(poptorch.Options(), Inc(3), batch_size=None, drop_last=False)
    assert loader.combinedBatchSize is None and [float(b) for b in loader] == [0.0, 1.0, 2.0]
    with pytest.raises(AttributeError):
        loader.options
