"""Model-side errors PopTorch 3.4 raises, with its wording.

Sources (graphcore/poptorch, branch sdk-release-3.4):
- poptorch/source/RemoveSurplusIdentityLosses.cpp ``removeSurplusIdentityLosses``: a training graph needs
  exactly one final identity loss (``poptorch.identity_loss`` or a torch loss function, which lowers to
  one): none is "Couldn't find a loss in graph!" (a returned tensor is not a loss by itself,
  tests/custom_loss_test.py ``test_no_loss``), two independent ones are "Multiple independent losses found
  in graph. Graph must have one final loss. Wrap final graph loss in poptorch.identity_loss."
  (``test_two_custom_losses``);
- python/_args_parser.py ``ArgsParser.__call__`` (omitted arguments take their Python default, which is
  compiled into the graph; "Mandatory parameter X missing") and ``ArgsParser.Args.validateInputs`` (every
  later call is compared with the compiled inputs: "Number of positional arguments mismatch", "Type
  mismatch for X", "Data type mismatch for X", "Shape mismatch for X", "Keys mismatch for X", "Value
  mismatch for X", each followed by the advice to recreate the wrapper or call ``destroy()``);
  tests/inputs_test.py ``test_none_input_dispatch_args_kwargs``.
"""
import re

import pytest
import torch
import torch.nn.functional as F

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)

ADVICE = ("\nThis error occurred because the inputs passed at runtime don't match the inputs used to compile the "
          "model.\nTo recompile the model for the new inputs create a new inferenceModel / trainingModel wrapper "
          "or call destroy() on the curent one and try again.")


def _exactly(message):
    return "^" + re.escape(message) + "$"


class NoLoss(torch.nn.Module):
    """tests/custom_loss_test.py ``test_no_loss``: arithmetic on outputs, no loss function."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.LogSoftmax(dim=1))

    def forward(self, x, target):
        fwd = self.model(x)
        loss = fwd * 12
        loss2 = target + 1
        a = loss + loss2
        return fwd, a, loss


class LoneTensor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(10, 1)

    def forward(self, x, target):
        return ((self.lin(x) - target) ** 2).mean()  # a scalar that depends on the weights, but no loss op


@pytest.mark.parametrize("model", [NoLoss, LoneTensor])
def test_training_without_a_loss(model):
    pm = poptorch.trainingModel(model())
    with pytest.raises(poptorch.Error, match=_exactly("Couldn't find a loss in graph!")):
        pm(torch.randn(1, 10), torch.randint(0, 10, [1]))


def test_two_independent_losses():
    class TwoLosses(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.LogSoftmax(dim=1))

        def forward(self, x, target):
            x = self.base(x)
            return F.nll_loss(x, target) + F.nll_loss(x, target) * 5.0

    pm = poptorch.trainingModel(TwoLosses())
    with pytest.raises(poptorch.Error, match=_exactly(
            "Multiple independent losses found in graph. Graph must have one final loss. Wrap final graph loss "
            "in poptorch.identity_loss.")):
        pm(torch.randn(1, 10), torch.randint(0, 10, [1]))


class WithLabels(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x, labels=None, scale=1):
        out = self.lin(x) * scale
        if labels is None:
            return out
        return out, F.mse_loss(out, labels)


def test_optional_argument_passed_then_omitted():
    pm = poptorch.inferenceModel(WithLabels())
    pm(torch.ones(1, 4), labels=torch.ones(1, 2))
    with pytest.raises(poptorch.Error, match=_exactly(
            "Type mismatch for labels: expected <class 'torch.Tensor'> but got <class 'NoneType'>." + ADVICE)):
        pm(torch.ones(1, 4))


def test_optional_argument_omitted_then_passed():
    pm = poptorch.inferenceModel(WithLabels())
    pm(torch.ones(1, 4))  # compiled with labels=None (the default)
    with pytest.raises(poptorch.Error, match=_exactly(
            "Type mismatch for labels: expected <class 'NoneType'> but got <class 'torch.Tensor'>." + ADVICE)):
        pm(torch.ones(1, 4), torch.ones(1, 2))
    pm(torch.ones(1, 4), labels=None)  # the same inputs as compiled


def test_changed_shape_dtype_and_value_after_compilation():
    pm = poptorch.trainingModel(WithLabels())
    pm(torch.ones(2, 4), torch.ones(2, 2))
    with pytest.raises(poptorch.Error, match=_exactly(
            "Shape mismatch for x: expected torch.Size([2, 4]) but got torch.Size([4, 4])." + ADVICE)):
        pm(torch.ones(4, 4), torch.ones(4, 2))
    with pytest.raises(poptorch.Error, match=_exactly(
            "Data type mismatch for labels: expected torch.float32 but got torch.float64." + ADVICE)):
        pm(torch.ones(2, 4), torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(poptorch.Error, match=_exactly("Value mismatch for scale: expected 1 but got 2." + ADVICE)):
        pm(torch.ones(2, 4), torch.ones(2, 2), scale=2)


def test_argument_count_and_missing_arguments():
    class Variadic(torch.nn.Module):
        def forward(self, a, *rest, **named):
            return a + sum(rest) + sum(named.values())

    pm = poptorch.inferenceModel(Variadic())
    pm(torch.ones(1), torch.ones(1), z=torch.ones(1))
    with pytest.raises(poptorch.Error, match=_exactly(
            "Number of positional arguments mismatch: expected 2 arguments but got 3." + ADVICE)):
        pm(torch.ones(1), torch.ones(1), torch.ones(1), z=torch.ones(1))
    with pytest.raises(poptorch.Error, match=_exactly(
            "Keys mismatch for named arguments: Unexpected arguments: w. Missing arguments: z." + ADVICE)):
        pm(torch.ones(1), torch.ones(1), w=torch.ones(1))
    with pytest.raises(poptorch.Error, match=_exactly("Mandatory parameter x missing")):
        poptorch.inferenceModel(WithLabels())(labels=torch.ones(1, 2))
