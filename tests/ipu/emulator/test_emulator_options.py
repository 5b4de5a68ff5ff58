"""poptorch.Options on the emulator: defaults, chainable setters, freezing (graphcore/poptorch
tests/options_test.py in spirit)."""
import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


def test_defaults_match_poptorch():
    opts = poptorch.Options()
    assert opts.device_iterations == 1
    assert opts.replication_factor == 1
    assert opts.input_group_size == 1
    assert opts.output_mode == poptorch.OutputMode.Default and opts.defaultOutputMode()
    assert opts.output_return_period == 1
    assert opts.connection_type == poptorch.ConnectionType.Always
    assert opts.available_memory_proportion == {}
    assert opts.Training.gradient_accumulation == 1
    assert opts.Training.accumulation_and_replication_reduction_type == poptorch.ReductionType.Mean
    assert opts.Training.meanAccumulationAndReplicationReductionStrategy == poptorch.MeanReductionStrategy.Post
    assert isinstance(opts._execution_strategy, poptorch.PipelinedExecution)
    assert opts._execution_strategy.auto_stage == poptorch.AutoStage.SameAsIpu
    assert opts.Distributed.numProcesses == 1 and opts.Distributed.processId == 0
    assert opts.TensorLocations.on_chip("optimizer")
    assert not opts.exists("random_seed")


def test_setters_chain_and_read_back():
    opts = (poptorch.Options().deviceIterations(4).replicationFactor(2).outputMode(poptorch.OutputMode.Sum)
            .autoRoundNumIPUs(True).enableExecutableCaching("/tmp/cache").useIpuModel(True).logDir("/tmp")
            .modelName("m").enableSyntheticData(False).connectionType(poptorch.ConnectionType.OnDemand))
    opts.Training.gradientAccumulation(8).accumulationAndReplicationReductionType(poptorch.ReductionType.Sum)
    opts.Precision.setPartialsType(torch.half).enableStochasticRounding(True).enableFloatingPointExceptions(False)
    opts.setAvailableMemoryProportion({"IPU0": 0.2, "IPU1": 0.3})
    opts.TensorLocations.setOptimizerLocation(
        poptorch.TensorLocationSettings().useOnChipStorage(False).useReplicatedTensorSharding(True))
    opts._Popart.set("autoRecomputation", 3).setPatterns({"TiedGather": True})
    opts.Jit.traceModel(False)
    assert (opts.device_iterations, opts.replication_factor) == (4, 2)
    assert opts.output_mode == poptorch.OutputMode.Sum
    assert opts.Training.gradient_accumulation == 8
    assert opts.Training.accumulation_and_replication_reduction_type == poptorch.ReductionType.Sum
    assert opts.available_memory_proportion == {0: 0.2, 1: 0.3}
    assert opts.TensorLocations.location("optimizer") == {"onChip": 0, "useReplicatedTensorSharding": 1}
    assert not opts.TensorLocations.on_chip("optimizer")
    assert opts._Popart.options["partialsTypeMatMuls"] == "half"
    assert opts._Popart.options["enableStochasticRounding"] is True
    assert opts._Popart.options["cachePath"] == "/tmp/cache"
    assert opts._Popart.options["autoRecomputation"] == 3
    assert opts._Popart.options["patterns"] == {"TiedGather": True}
    assert opts.use_model and opts.model_name == "m" and opts.auto_round_num_ipus
    assert not opts.Jit.trace_model


def test_invalid_values_raise_like_poptorch():
    opts = poptorch.Options()
    with pytest.raises(ValueError, match="poptorch.ReductionType.Mean or poptorch.ReductionType.Sum"):
        opts.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.NoReduction)
    with pytest.raises(AssertionError, match="Invalid key: GPU0"):
        opts.setAvailableMemoryProportion({"GPU0": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        opts.setAvailableMemoryProportion({"IPU0": 1.5})
    with pytest.raises(AssertionError, match="output_return_period"):
        opts.outputMode(poptorch.OutputMode.EveryN)
    with pytest.raises(ValueError, match="setPartialsType"):
        opts.Precision.setPartialsType(torch.int32)
    with pytest.raises(ValueError, match="positive integer"):
        opts.deviceIterations(0)
    with pytest.raises(AttributeError, match="Invalid attribute"):
        getattr(opts, "no_such_option")


@pytest.mark.parametrize("wrap", ["training", "inference", "dataloader"])
def test_options_are_frozen_once_used_and_clone_unfreezes(wrap):
    opts = poptorch.Options()
    model = torch.nn.Linear(2, 1)
    if wrap == "training":
        poptorch.trainingModel(model, opts)
    elif wrap == "inference":
        poptorch.inferenceModel(model, opts)
    else:
        poptorch.DataLoader(opts, torch.utils.data.TensorDataset(torch.zeros(4, 2)))
    for setter in (lambda: opts.deviceIterations(2), lambda: opts.Training.gradientAccumulation(2),
                   lambda: opts._Popart.set("a", 1), lambda: opts.randomSeed(0),
                   lambda: opts.setExecutionStrategy(poptorch.ShardedExecution()),
                   lambda: opts.Precision.enableStochasticRounding(True),
                   lambda: opts.TensorLocations.setWeightLocation(poptorch.TensorLocationSettings())):
        with pytest.raises(AttributeError, match="Can't modify frozen Options"):
            setter()
    copy = opts.clone()
    copy.deviceIterations(3).Training.gradientAccumulation(2)
    copy._Popart.set("a", 1)
    assert copy.device_iterations == 3 and opts.device_iterations == 1


def test_executor_works_on_a_clone():
    opts = poptorch.Options().deviceIterations(2)
    m = poptorch.trainingModel(torch.nn.Linear(2, 1), opts)
    assert m.options is not opts
    assert m.options.output_mode == poptorch.OutputMode.Final  # Default resolved for training
    assert opts.output_mode == poptorch.OutputMode.Default
    assert poptorch.inferenceModel(torch.nn.Linear(2, 1)).options.output_mode == poptorch.OutputMode.All


def test_random_seed_seeds_torch_like_poptorch():
    poptorch.Options().randomSeed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(a, torch.rand(3))


def test_distributed_reads_openmpi_environment(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    opts = poptorch.Options()
    assert (opts.Distributed.numProcesses, opts.Distributed.processId) == (4, 2)
    opts.Distributed.disable()
    assert opts.Distributed.numProcesses == 1
    opts.Distributed.configureProcessId(1, 2)
    assert (opts.Distributed.numProcesses, opts.Distributed.processId) == (2, 1)


def test_environment_defaults(monkeypatch):
    monkeypatch.setenv("POPTORCH_CACHE_DIR", "/tmp/popcache")
    monkeypatch.setenv("POPTORCH_DEFAULT_OPTIONS", '{"Precision.enableFloatingPointExceptions": true, '
                                                   '"deviceIterations": 3}')
    opts = poptorch.Options()
    assert opts._Popart.options["cachePath"] == "/tmp/popcache"
    assert opts._Popart.options["enableFloatingPointChecks"] is True
    assert opts.device_iterations == 3


def test_emulator_options_are_separate_from_poptorch_ones(monkeypatch):
    assert poptorch.Options()._emulator.memory_check
    monkeypatch.setenv("POPTORCH_EMULATOR_MEMORY_CHECK", "0")
    opts = poptorch.Options()
    assert not opts._emulator.memory_check
    opts._emulator.memoryCheck(True).ipuMemoryBytes(1000)
    assert opts._emulator.memory_check and opts._emulator.ipu_memory_bytes == 1000
