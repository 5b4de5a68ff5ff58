"""poptorch.custom_op on the emulator: a registry of torch implementations stands in for the op's
shared library (graphcore/poptorch tests/custom_ops_test.py, custom_ops_attributes_test.py)."""
import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class _LeakyRelu(torch.autograd.Function):
    """A hand-written forward/backward, like a PopART op with its grad op."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return torch.where(x > 0, x, alpha * x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.where(x > 0, grad, ctx.alpha * grad), None


@pytest.fixture
def leaky_relu():
    poptorch.register_custom_op("custom.ops", "LeakyRelu", 1,
                                lambda x, alpha=0.01: _LeakyRelu.apply(x, alpha))
    yield
    poptorch.unregister_custom_op("custom.ops", "LeakyRelu", 1)


def test_round_trip_with_autograd(leaky_relu):
    assert ("custom.ops", "LeakyRelu", 1) in poptorch.registered_custom_ops()
    x = torch.randn(3, 4, requires_grad=True)
    (out,) = poptorch.custom_op([x], "LeakyRelu", "custom.ops", 1, example_outputs=[x],
                                attributes={"alpha": 0.1})
    torch.testing.assert_close(out, torch.nn.functional.leaky_relu(x, 0.1))
    grad, = torch.autograd.grad(out.sum(), x)
    ref, = torch.autograd.grad(torch.nn.functional.leaky_relu(x, 0.1).sum(), x)
    torch.testing.assert_close(grad, ref)


def test_custom_op_trains_inside_a_training_model(leaky_relu):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, y):
            h = poptorch.custom_op([self.lin(x)], "LeakyRelu", "custom.ops", 1, example_outputs=[x],
                                   attributes={"alpha": 0.2})[0]
            return torch.nn.functional.mse_loss(h, y)

    torch.manual_seed(0)
    model, ref = Model(), torch.nn.Linear(3, 3)
    ref.load_state_dict(model.lin.state_dict())
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    pm = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    pm(x, y)  # (pm stays referenced: the host model reads the device weights through it)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(torch.nn.functional.leaky_relu(ref(x), 0.2), y).backward()
    opt.step()
    torch.testing.assert_close(model.lin.weight, ref.weight)


def test_unknown_op_lists_the_registered_ones(leaky_relu):
    with pytest.raises(poptorch.Error, match=r"Unknown custom op custom\.ops::Missing version 1\. Registered "
                                             r"custom ops: .*custom\.ops::LeakyRelu v1"):
        poptorch.custom_op([torch.ones(1)], "Missing", "custom.ops", 1, example_outputs=[torch.ones(1)])


def test_outputs_are_checked_against_examples(leaky_relu):
    x = torch.randn(2, 2)
    with pytest.raises(poptorch.Error, match=r"output 0 is torch.float32 \(2, 2\) but example_outputs\[0\] is "
                                             r"torch.float32 \(3,\)"):
        poptorch.custom_op([x], "LeakyRelu", "custom.ops", 1, example_outputs=[torch.zeros(3)])
    with pytest.raises(poptorch.Error, match="returned 1 outputs but example_outputs has 2"):
        poptorch.custom_op([x], "LeakyRelu", "custom.ops", 1, example_outputs=[x, x])


def test_attribute_rules_match_poptorch(leaky_relu):
    x = torch.ones(1)
    with pytest.raises(ValueError, match="All attribute keys must be strings"):
        poptorch.custom_op([x], "LeakyRelu", "custom.ops", 1, [x], attributes={1: 0.1})
    with pytest.raises(ValueError, match="must all be the same"):
        poptorch.custom_op([x], "LeakyRelu", "custom.ops", 1, [x], attributes={"a": [1, 2.0]})
    with pytest.raises(ValueError, match="non-ASCII"):
        poptorch.custom_op([x], "LeakyRelu", "custom.ops", 1, [x], attributes={"alpha": "é"})


def test_registration_as_a_decorator_returns_several_outputs():
    @poptorch.register_custom_op("custom.ops", "SplitHalves", 2)
    def split(x):
        return x[: x.shape[0] // 2], x[x.shape[0] // 2:]

    try:
        a, b = poptorch.custom_op([torch.arange(4.0)], "SplitHalves", "custom.ops", 2,
                                  example_outputs=[torch.zeros(2), torch.zeros(2)])
        assert a.tolist() == [0.0, 1.0] and b.tolist() == [2.0, 3.0]
    finally:
        poptorch.unregister_custom_op("custom.ops", "SplitHalves", 2)


def test_identity_ops_and_helpers():
    x = torch.randn(3, 4)
    w = torch.randn(4, 2)
    torch.testing.assert_close(poptorch.serializedMatMul(x, w, poptorch.MatMulSerializationMode.OutputChannels, 2),
                               x @ w)
    assert poptorch.set_available_memory(x, 0.3) is x and poptorch.nop(x) is x
    assert poptorch.recomputationCheckpoint(x) is x
    a, b = poptorch.recomputationCheckpoint(x, w)
    assert a is x and b is w
    assert isinstance(poptorch.recomputationCheckpoint([x, w]), list)
    assert poptorch.ipuHardwareIsAvailable() is False and poptorch.isRunningOnIpu() is False
    assert poptorch.identity_loss(x, "sum").item() == pytest.approx(x.sum().item())
    assert poptorch.identity_loss(x, "mean").item() == pytest.approx(x.mean().item())
    with pytest.raises(AssertionError, match="Unsupported reduction type"):
        poptorch.identity_loss(x, "max")
    out = poptorch.for_loop(3, lambda t: t * 2, [torch.ones(2)])
    assert out[0].tolist() == [8.0, 8.0]
