"""Batching semantics of trainingModel/inferenceModel on the emulator, replaying
graphcore/poptorch:tests/batching_test.py, plus replicas, input groups and sample order."""
import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class ClassifierModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(10, 10)
        self.loss = torch.nn.CrossEntropyLoss()

    def forward(self, data, target):
        out = self.linear(data)
        return out, self.loss(out, target)


@pytest.mark.parametrize("mode", list(poptorch.OutputMode))
def test_inference_output_modes(mode):
    torch.manual_seed(42)
    model = torch.nn.Linear(6, 20)
    inputs = torch.randn([10, 1, 5, 6])
    native = model(inputs)
    opts = poptorch.Options().deviceIterations(10)
    opts.outputMode(mode, output_return_period=5)
    out = poptorch.inferenceModel(model, opts)(inputs)
    if mode in (poptorch.OutputMode.All, poptorch.OutputMode.Default):
        assert out.shape == (10, 1, 5, 20)
        torch.testing.assert_close(out, native)
    elif mode == poptorch.OutputMode.EveryN:
        assert out.shape == (2, 1, 5, 20)
        torch.testing.assert_close(out[0], native[4])
        torch.testing.assert_close(out[1], native[9])
    elif mode == poptorch.OutputMode.Final:
        assert out.shape == (1, 1, 5, 20)
        torch.testing.assert_close(out[0], native[-1])
    else:
        assert out.shape == (1, 1, 5, 20)
        torch.testing.assert_close(out, native.sum(dim=0, keepdim=True))


@pytest.mark.parametrize("mode", list(poptorch.OutputMode))
def test_training_output_modes(mode):
    torch.manual_seed(42)
    data = torch.randn(1000, 10)
    label = torch.randint(0, 10, [1]).expand([1000])
    opts = poptorch.Options().deviceIterations(1000)
    opts.outputMode(mode, output_return_period=20)
    out, loss = poptorch.trainingModel(ClassifierModel(), opts)(data, label)
    if mode == poptorch.OutputMode.All:
        assert out.shape == (1000, 10) and loss.shape == (1000,)
        means = [loss[i:i + 100].mean() for i in range(0, 1000, 100)]
        assert all(b < a for a, b in zip(means, means[1:]))  # one update per device iteration
    elif mode == poptorch.OutputMode.EveryN:
        assert out.shape == (50, 10) and loss.shape == (50,)
    else:
        assert out.shape == (1, 10) and loss.dim() == 0
        if mode == poptorch.OutputMode.Sum:
            assert loss > 500.0
        else:
            assert loss < 0.2


def test_sum_is_the_sum_of_all_outputs_in_training():
    torch.manual_seed(0)
    data, label = torch.randn(12, 10), torch.randint(0, 10, [12])
    model = ClassifierModel()
    opts = poptorch.Options().deviceIterations(3).outputMode(poptorch.OutputMode.All)
    opts.Training.gradientAccumulation(2)
    all_model = poptorch.trainingModel(model, opts.clone(), torch.optim.SGD(model.parameters(), lr=0.0))
    _, losses = all_model(data, label)
    assert losses.shape == (6,)
    all_model.destroy()
    opts = opts.clone().outputMode(poptorch.OutputMode.Sum)
    sum_model = poptorch.trainingModel(model, opts, torch.optim.SGD(model.parameters(), lr=0.0))
    _, total = sum_model(data, label)
    torch.testing.assert_close(total, losses.sum())


def _train_with_accumulation(inputs, targets, ga, reduction, lr):
    torch.manual_seed(42)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(10, 10)
            self.loss = torch.nn.L1Loss(reduction="mean")

        def forward(self, data, target):
            out = self.linear(data)
            return out, self.loss(out, target)

    model = Model()
    opts = poptorch.Options().outputMode(poptorch.OutputMode.All)
    opts.Training.gradientAccumulation(ga)
    if reduction is not None:
        opts.Training.accumulationAndReplicationReductionType(reduction)
    pm = poptorch.trainingModel(model, opts, torch.optim.SGD(model.parameters(), lr=lr))
    for _ in range(10):
        pm(inputs, targets)
    return pm.linear.weight.detach().clone()


def test_gradient_accumulation_mean_and_sum():
    torch.manual_seed(42)
    targets, inputs = torch.randn(4, 10), torch.randn(4, 10)
    w1 = _train_with_accumulation(inputs, targets, 1, poptorch.ReductionType.Mean, 0.01)
    torch.testing.assert_close(_train_with_accumulation(inputs, targets, 2, poptorch.ReductionType.Mean, 0.01), w1)
    torch.testing.assert_close(_train_with_accumulation(inputs, targets, 2, None, 0.01), w1)  # default Mean
    w1 = _train_with_accumulation(inputs, targets, 1, poptorch.ReductionType.Sum, 0.02)
    torch.testing.assert_close(_train_with_accumulation(inputs, targets, 2, poptorch.ReductionType.Sum, 0.01), w1)


def test_batch_dimension_error_message():
    opts = poptorch.Options().deviceIterations(2).replicationFactor(2)
    opts.Training.gradientAccumulation(3)
    pm = poptorch.trainingModel(ClassifierModel(), opts)
    with pytest.raises(poptorch.Error, match=r"Invalid batch dimension: In the input torch.Size\(\[10, 10\]\), "
                       r"the batch dimension \(10\) must be a multiple of Options.deviceIterations\(2\) \* "
                       r"\(Options.replicationFactor\(2\) / Options.inputReplicaGrouping.input_group_size\(1\)\)"
                       r" \* Options.Training.gradientAccumulation\(3\) = 12"):
        pm(torch.randn(10, 10), torch.zeros(10, dtype=torch.long))
    with pytest.raises(AssertionError):  # PopTorch raises it with an assert
        pm(torch.randn(10, 10), torch.zeros(10, dtype=torch.long))


class Echo(torch.nn.Module):
    """Returns its input (to see which rows each micro-batch and replica got) and a trainable loss."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, scale):
        return x * 1.0, poptorch.identity_loss((x * self.w * scale).sum(), reduction="sum")


def test_sample_order_is_device_iterations_accumulation_replicas_micro():
    di, ga, r, micro = 2, 3, 2, 2
    x = torch.arange(di * ga * r * micro, dtype=torch.float32).unsqueeze(1)
    opts = poptorch.Options().deviceIterations(di).replicationFactor(r).outputMode(poptorch.OutputMode.All)
    opts.Training.gradientAccumulation(ga)
    echo = Echo()
    pm = poptorch.trainingModel(echo, opts, torch.optim.SGD(echo.parameters(), lr=0.0))
    out, losses = pm(x, torch.tensor(1.0))  # 0-d input passes through unchanged
    torch.testing.assert_close(out, x)  # All: [DI, GA, R, micro] concatenated in that order
    assert losses.shape == (di * ga * r,)
    torch.testing.assert_close(losses, x.view(-1, micro).sum(1))

    opts = opts.clone().outputMode(poptorch.OutputMode.Final)
    final = poptorch.trainingModel(Echo(), opts)(x, torch.tensor(1.0))
    torch.testing.assert_close(final[0], x.view(di, ga, r * micro, 1)[-1, -1])  # last step, each replica
    assert final[1].shape == (r,)


def test_input_replica_groups_share_inputs():
    r, g = 4, 2
    x = torch.tensor([[1.0], [2.0]])  # R / g = 2 input slices
    opts = poptorch.Options().replicationFactor(r).inputReplicaGrouping(g, poptorch.CommGroupType.Consecutive)
    opts.outputMode(poptorch.OutputMode.All)
    out = poptorch.inferenceModel(Echo(), opts)(x, torch.tensor(1.0))[0]
    torch.testing.assert_close(out, torch.tensor([[1.0], [1.0], [2.0], [2.0]]))
    opts = opts.clone().inputReplicaGrouping(g, poptorch.CommGroupType.Orthogonal)
    out = poptorch.inferenceModel(Echo(), opts)(x, torch.tensor(1.0))[0]
    torch.testing.assert_close(out, torch.tensor([[1.0], [2.0], [1.0], [2.0]]))


def test_replicated_training_mean_equals_one_big_batch():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ref.load_state_dict(model.state_dict())

    class WithLoss(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, y):
            return torch.nn.functional.mse_loss(self.net(x), y)

    x, y = torch.randn(8, 3), torch.randn(8, 2)
    opts = poptorch.Options().replicationFactor(4)
    pm = poptorch.trainingModel(WithLoss(model), opts, torch.optim.SGD(model.parameters(), lr=0.1))
    loss = pm(x, y)
    assert loss.shape == (4,)  # Final: one loss per replica
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(ref(x), y).backward()  # equal micro-batches: mean of means = mean
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_kwargs_dicts_and_nested_outputs():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, *, extra=None):
            y = self.lin(x) + extra["bias"]
            return {"y": y, "pair": (y.sum(), None)}

    opts = poptorch.Options().deviceIterations(2)
    out = poptorch.inferenceModel(Model(), opts)(torch.ones(4, 2), extra={"bias": torch.zeros(4, 2)})
    assert out["y"].shape == (4, 2) and out["pair"][0].shape == (2,) and out["pair"][1] is None


def test_outputs_are_detached_and_inputs_must_keep_their_shapes():
    pm = poptorch.trainingModel(ClassifierModel())
    _, loss = pm(torch.randn(1, 10), torch.zeros(1, dtype=torch.long))
    assert not loss.requires_grad
    with pytest.raises(RuntimeError):
        loss.backward()
    with pytest.raises(poptorch.Error, match=r"Shape mismatch for data: expected torch.Size\(\[1, 10\]\) but got "
                                             r"torch.Size\(\[2, 10\]\)"):  # PopTorch's _args_parser.py wording
        pm(torch.randn(2, 10), torch.zeros(2, dtype=torch.long))


def test_inference_rejects_gradient_accumulation():
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(2)
    with pytest.raises(poptorch.poptorch_core.Error,
                       match=r"You must set poptorch\.Options\(\)\.Training\.gradientAccumulation to 1 or leave "
                             r"it as its default value \(1\) when running a poptorch\.inferenceModel\(\)\. Use "
                             r"poptorch\.Options\(\)\.deviceIterations"):
        poptorch.inferenceModel(torch.nn.Linear(1, 1), opts)
    opts = opts.clone().setExecutionStrategy(poptorch.ShardedExecution())
    with pytest.raises(poptorch.Error, match=r"inferenceModel\(\)\.$"):
        poptorch.inferenceModel(torch.nn.Linear(1, 1), opts)


def test_wrapping_twice_needs_destroy_and_default_optimizer_is_sgd():
    model = ClassifierModel()
    pm = poptorch.trainingModel(model)
    assert isinstance(pm.optimizer, poptorch.optim.SGD) and pm.optimizer.param_groups[0]["lr"] == 0.01
    with pytest.raises(RuntimeError, match="already been wrapped"):
        poptorch.trainingModel(model)
    poptorch.inferenceModel(model)  # allowed: shares the weights
    pm.destroy()  # before compilation destroy() does nothing (PopTorch): the module stays wrapped
    with pytest.raises(RuntimeError, match="already been wrapped"):
        poptorch.trainingModel(model)
    pm.compile(torch.randn(1, 10), torch.zeros(1, dtype=torch.long))
    pm.destroy()
    assert not pm.isCompiled()
    poptorch.trainingModel(model)


def test_shallow_copy_shares_parameters_and_device_state():
    model = ClassifierModel()
    pm = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    assert pm.model is model and pm.linear is model.linear
    before = model.linear.weight.detach().clone()
    with pytest.raises(poptorch.Error, match="not been compiled"):
        pm.copyWeightsToHost()
    pm(torch.randn(1, 10), torch.zeros(1, dtype=torch.long))
    assert pm.isCompiled() and pm.isAttachedToDevice()
    assert not torch.equal(before, model.linear.weight)
    pm.detachFromDevice()
    assert not pm.isAttachedToDevice()
    pm(torch.randn(1, 10), torch.zeros(1, dtype=torch.long))  # re-attaches implicitly
    assert pm.isAttachedToDevice()


def test_is_running_on_ipu_and_offline_device():
    seen = []

    class Model(torch.nn.Module):
        def forward(self, x):
            seen.append(poptorch.isRunningOnIpu())
            return x * 2

    m = Model()
    m(torch.ones(1))
    poptorch.inferenceModel(m)(torch.ones(1))
    assert seen[0] is False and all(seen[1:])
    opts = poptorch.Options().useOfflineIpuTarget()
    pm = poptorch.inferenceModel(m, opts)
    pm.compile(torch.ones(1))
    with pytest.raises(AssertionError, match="offline device"):
        pm(torch.ones(1))
