"""The emulator's per-IPU memory estimate and out-of-memory check (not PopTorch API)."""
import pytest
import torch

from groupbert.ipu import emulator as poptorch
from groupbert.ipu.emulator import memory

torch.set_num_threads(1)

WIDTH = 500  # 4 layers of 500 x 500 (+ bias): ~1.0 MB of fp32 weights each


class Deep(torch.nn.Module):
    def __init__(self, ipus=None):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH) for _ in range(4))
        if ipus:
            for i, layer in enumerate(self.layers):
                poptorch.BeginBlock(layer, f"L{i}", ipu_id=ipus[i])

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return poptorch.identity_loss(x.pow(2).mean(), reduction="none")


LAYER_BYTES = (WIDTH * WIDTH + WIDTH) * 4


def _opts(ga=7, capacity=6_000_000):
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(ga)
    opts._emulator.ipuMemoryBytes(capacity)
    return opts


def _adamw(model):
    return poptorch.optim.AdamW(model.parameters(), lr=1e-3)


def test_too_big_for_one_ipu_raises_out_of_memory():
    model = Deep()
    pm = poptorch.trainingModel(model, _opts(), _adamw(model))
    # weights 4 MB + AdamW state 8 MB + accumulators 4 MB > 6 MB
    with pytest.raises(poptorch.OutOfMemoryError, match=r"Out of memory on IPU 0 \(pipeline stage 0 of 1\).*"
                                                        r"Weights 4\.0 MB, optimizer state 8\.0 MB, gradient "
                                                        r"accumulators 4\.0 MB.*more IPUs") as e:
        pm.compile(torch.randn(7, WIDTH))
    assert isinstance(e.value, poptorch.Error) and e.value.report[0].weights == 4 * LAYER_BYTES
    assert not pm.isCompiled()


def test_split_over_four_ipus_fits_and_reports_each_part():
    model = Deep(ipus=[0, 1, 2, 3])
    pm = poptorch.trainingModel(model, _opts(), _adamw(model))
    pm.compile(torch.randn(7, WIDTH))
    rows = pm.memory_report
    assert [r.ipu for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r.weights == LAYER_BYTES
        assert r.optimizer_state == 2 * LAYER_BYTES  # AdamW: two fp32 moments
        assert r.accumulators == LAYER_BYTES  # GA > 1
        assert r.fits
    assert [r.in_flight for r in rows] == [[7], [5], [3], [1]]  # PopART stash: 2 (n - s) - 1
    per_mb = [r.activations_per_micro_batch for r in rows]
    assert all(p > 0 for p in per_mb)
    assert [r.activations for r in rows] == [p * k for p, (k,) in zip(per_mb, [r.in_flight for r in rows])]
    assert "capacity" in memory.format_report(rows)


def test_off_chip_state_and_no_accumulation_shrink_the_estimate():
    model = Deep()
    opts = _opts(ga=1)
    opts.TensorLocations.setOptimizerLocation(poptorch.TensorLocationSettings().useOnChipStorage(False))
    pm = poptorch.trainingModel(model, opts, _adamw(model))
    pm.compile(torch.randn(1, WIDTH))
    (row,) = pm.memory_report
    assert (row.optimizer_state, row.accumulators, row.weights) == (0, 0, 4 * LAYER_BYTES)
    sgd = poptorch.trainingModel(Deep(), _opts(ga=1, capacity=10**9),
                                 optimizer=None)  # default SGD without momentum: no state
    sgd.compile(torch.randn(1, WIDTH))
    assert sgd.memory_report[0].optimizer_state == 0


def test_replicated_tensor_sharding_divides_optimizer_state():
    model = Deep()
    opts = _opts(ga=1, capacity=10**9).replicationFactor(2)
    opts.TensorLocations.setOptimizerLocation(poptorch.TensorLocationSettings().useReplicatedTensorSharding(True))
    pm = poptorch.trainingModel(model, opts, _adamw(model))
    pm.compile(torch.randn(2, WIDTH))
    assert pm.memory_report[0].optimizer_state == 4 * LAYER_BYTES  # 8 MB of moments over 2 replicas


def test_recomputation_stashes_stage_inputs_only():
    kwargs = dict(capacity=10**9)
    plain = poptorch.trainingModel(Deep(ipus=[0, 0, 1, 1]), _opts(ga=3, **kwargs))
    plain.compile(torch.randn(3, WIDTH))
    opts = _opts(ga=3, **kwargs)
    opts._Popart.set("autoRecomputation", 3)
    recomputed = poptorch.trainingModel(Deep(ipus=[0, 0, 1, 1]), opts)
    recomputed.compile(torch.randn(3, WIDTH))
    assert recomputed.memory_report[0].activations < plain.memory_report[0].activations
    assert plain.stages[1].input_bytes == WIDTH * 4  # the activation entering IPU 1, one sample


def test_check_can_be_disabled(monkeypatch):
    opts = _opts()
    opts._emulator.memoryCheck(False)
    model = Deep()
    pm = poptorch.trainingModel(model, opts, _adamw(model))
    pm.compile(torch.randn(7, WIDTH))
    assert not pm.memory_report[0].fits
    monkeypatch.setenv("POPTORCH_EMULATOR_MEMORY_CHECK", "0")
    poptorch.trainingModel(Deep(), _opts()).compile(torch.randn(7, WIDTH))
    monkeypatch.setattr(memory, "IPU_MEMORY_BYTES", 1000)
    monkeypatch.setenv("POPTORCH_EMULATOR_MEMORY_CHECK", "1")
    opts = poptorch.Options()
    opts._emulator.ipuMemoryBytes(None)
    with pytest.raises(poptorch.OutOfMemoryError, match="an IPU has 0.0 MB"):
        poptorch.inferenceModel(Deep(), opts).compile(torch.randn(1, WIDTH))


def test_default_capacity_is_a_gc200():
    assert poptorch.IPU_MEMORY_BYTES == 900_000_000 and poptorch.IPU_TILES == 1472
    pm = poptorch.trainingModel(Deep())
    pm.compile(torch.randn(1, WIDTH))
    assert pm.memory_report[0].capacity == 900_000_000
