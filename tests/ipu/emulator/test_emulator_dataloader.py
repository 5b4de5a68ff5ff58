"""poptorch.DataLoader on the emulator (graphcore/poptorch tests/dataloader_test.py in spirit)."""
import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


def _dataset(n):
    return torch.utils.data.TensorDataset(torch.arange(n).unsqueeze(1))


@pytest.mark.parametrize("di,r,g,ga", [(1, 1, 1, 1), (3, 1, 1, 1), (2, 2, 1, 3), (2, 4, 2, 1)])
def test_combined_batch_size_and_length(di, r, g, ga):
    opts = poptorch.Options().deviceIterations(di).replicationFactor(r).inputReplicaGrouping(g)
    opts.Training.gradientAccumulation(ga)
    loader = poptorch.DataLoader(opts, _dataset(100), batch_size=2)
    combined = 2 * di * (r // g) * ga
    assert loader.combinedBatchSize == combined
    assert len(loader) == 100 // combined
    batches = list(loader)
    assert len(batches) == len(loader) and all(b[0].shape == (combined, 1) for b in batches)
    assert torch.equal(torch.cat([b[0] for b in batches]).squeeze(1), torch.arange(len(loader) * combined))


def test_freezes_options_and_feeds_a_training_model():
    opts = poptorch.Options().deviceIterations(2)
    opts.Training.gradientAccumulation(2)
    loader = poptorch.DataLoader(opts, torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randn(16, 1)),
                                 batch_size=2, shuffle=True)
    with pytest.raises(AttributeError, match="frozen"):
        opts.deviceIterations(4)
    assert loader.options is opts

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, y):
            return torch.nn.functional.mse_loss(self.lin(x), y)

    pm = poptorch.trainingModel(Model(), opts)
    for x, y in loader:
        assert pm(x, y).dim() == 0


def test_drop_last_false_keeps_a_short_batch():
    opts = poptorch.Options().deviceIterations(4)
    loader = poptorch.DataLoader(opts, _dataset(10), batch_size=1, drop_last=False)
    assert [len(b[0]) for b in loader] == [4, 4, 2]


def test_distributed_processes_read_contiguous_blocks():
    seen = []
    for pid in range(2):
        opts = poptorch.Options().deviceIterations(2)
        opts.Distributed.configureProcessId(pid, 2)
        loader = poptorch.DataLoader(opts, _dataset(20), batch_size=2)
        rows = torch.cat([b[0] for b in loader]).squeeze(1).tolist()
        seen.append(rows)
        assert len(loader) == 2
    assert seen == [list(range(8)), list(range(8, 16))]


def test_distributed_shuffle_needs_a_seed_and_is_a_global_permutation():
    opts = poptorch.Options()
    opts.Distributed.configureProcessId(0, 2)
    with pytest.raises(AssertionError, match="randomSeed"):
        poptorch.DataLoader(opts, _dataset(8), batch_size=1, shuffle=True)
    rows = []
    for pid in range(2):
        opts = poptorch.Options().randomSeed(5)
        opts.Distributed.configureProcessId(pid, 2)
        rows += [int(b[0]) for b in poptorch.DataLoader(opts, _dataset(8), batch_size=1, shuffle=True)]
    assert sorted(rows) == list(range(8)) and rows != list(range(8))


def test_async_modes_load_synchronously():
    opts = poptorch.Options().deviceIterations(2)
    loader = poptorch.DataLoader(opts, _dataset(8), batch_size=2, mode=poptorch.DataLoaderMode.AsyncRebatched)
    assert [b[0].shape[0] for b in loader] == [4, 4]
    # PopTorch refuses a second accessor around a loader that has one; a Sync loader can be wrapped
    sync = poptorch.DataLoader(poptorch.Options().deviceIterations(2), _dataset(8), batch_size=2)
    assert [b[0].shape[0] for b in poptorch.AsynchronousDataAccessor(sync)] == [4, 4]
