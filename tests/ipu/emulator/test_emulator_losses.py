"""How a trainingModel finds its loss: PopTorch's rules (identity_loss, torch loss functions, one final
loss; graphcore/poptorch:poptorch/source/RemoveSurplusIdentityLosses.cpp). A returned tensor that is
neither is not a loss (tests/custom_loss_test.py, test_no_loss)."""
import pytest
import torch
import torch.nn.functional as F

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class TwoHeads(torch.nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        self.mode = mode

    def forward(self, x, y):
        la = F.mse_loss(self.a(x), y)
        if self.mode == "hidden":
            return self.a(x)  # the torch loss is computed but not returned
        lb = F.l1_loss(self.b(x), y)
        if self.mode == "independent":
            return la, lb
        if self.mode == "sum":
            return la + lb
        if self.mode == "marked":
            return la.detach(), lb.detach(), poptorch.identity_loss(la + lb, reduction="none")
        raise ValueError(self.mode)


def _step(mode, opt_lr=0.1):
    torch.manual_seed(0)
    model = TwoHeads(mode)
    pm = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=opt_lr))
    return model, pm


@pytest.mark.parametrize("mode", ["independent", "sum"])
def test_two_torch_losses_need_identity_loss(mode):
    _, pm = _step(mode)
    with pytest.raises(poptorch.Error, match="Multiple independent losses found in graph. Graph must have one "
                                             "final loss. Wrap final graph loss in poptorch.identity_loss."):
        pm(torch.randn(1, 3), torch.randn(1, 2))


def test_identity_loss_marks_the_final_loss():
    model, pm = _step("marked")
    ref = TwoHeads("sum")
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(2, 3), torch.randn(2, 2)
    la, lb, total = pm(x, y)
    torch.testing.assert_close(total, la + lb)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref(x, y).backward()
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    assert pm._loss_rule == ("identity", 0)


def test_a_torch_loss_that_is_not_returned_is_an_error():
    _, pm = _step("hidden")
    with pytest.raises(poptorch.Error, match="mse_loss.*not among its outputs"):
        pm(torch.randn(1, 3), torch.randn(1, 2))


def test_no_fallback_to_a_lone_tensor_or_the_last_tuple_element():
    class Custom(torch.nn.Module):
        def __init__(self, as_tuple):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)
            self.as_tuple = as_tuple

        def forward(self, x):
            out = self.lin(x)
            loss = (out ** 2).mean()  # no torch loss function, no identity_loss
            return (out, loss) if self.as_tuple else loss

    for as_tuple in (False, True):
        with pytest.raises(poptorch.Error, match="^Couldn't find a loss in graph!$"):
            poptorch.trainingModel(Custom(as_tuple))(torch.ones(1, 2))


def test_no_trainable_loss_is_reported():
    class NoLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return {"out": self.lin(x)}

    with pytest.raises(poptorch.Error, match="Couldn't find a loss in graph!"):
        poptorch.trainingModel(NoLoss())(torch.ones(1, 2))

    class Frozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.sum()

    with pytest.raises(poptorch.Error, match="Couldn't find a loss in graph!"):
        poptorch.trainingModel(Frozen())(torch.ones(1, 2))


def test_none_reduction_of_a_vector_backpropagates_its_sum():
    torch.manual_seed(0)

    class PerSample(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return poptorch.identity_loss(self.lin(x).squeeze(1) ** 2, reduction="none")

    model = PerSample()
    ref = PerSample()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(3, 2)
    pm = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    losses = pm(x)  # (pm stays referenced: the host model reads the device weights through it)
    assert losses.shape == (3,)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref(x).sum().backward()
    opt.step()
    torch.testing.assert_close(model.lin.weight, ref.lin.weight)


def test_losses_without_gradient_are_metrics_not_losses():
    class WithMetric(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, y):
            out = self.lin(x)
            with torch.no_grad():
                metric = F.l1_loss(out, y)  # a torch loss function used as a metric
            return metric, F.mse_loss(out, y)

    metric, loss = poptorch.trainingModel(WithMetric())(torch.ones(1, 2), torch.zeros(1, 2))
    assert metric.dim() == 0 and loss.dim() == 0
