"""Host and device weights are separate copies, as in PopTorch 3.4.

Sources (graphcore/poptorch, branch sdk-release-3.4):
- python/_poplar_executor.py: ``PoplarExecutor.copyWeightsToHost`` (copies into the host tensors in place,
  ``_host_weights_version += 1``), ``copyWeightsToDevice``, ``copyWeightsToHostIfNeeded`` (only when
  ``_dirty_host_weights``, set after every training ``__call__``), ``_on_device_attach`` (uploads on every
  attach), ``_compile`` (attaches with ``ConnectionType.Always``), ``attachToDevice``, ``detachFromDevice``
  (reads the weights back), ``load_state_dict`` (re-uploads when attached), ``destroy`` (reads back, unwraps;
  returns at once before compilation), ``__call__`` (an inference model re-uploads when the training
  wrapper's ``_host_weights_version`` moved on);
- the classes ``PoptorchModel``/``PoptorchParameter``/``PoptorchBuffer`` made in ``PoplarExecutor.__init__``:
  the implicit copy runs when the wrapped module's ``_parameters``/``_buffers``/``forward`` are read, when an
  attribute resolves to a Parameter, on ``state_dict()``, and on any attribute access or torch function of a
  parameter or buffer;
- tests/weights_writing_test.py (``test_training_inference_parameters``: "This will trigger
  copyWeightsToHost()" for ``model.named_parameters()``) and docs/user_guide/overview.rst (host writes need an
  explicit ``copyWeightsToDevice()``).

PopTorch has no public copy counter; ``executor._emulator_copies`` is the emulator's.
"""
import gc
import logging

import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x, y):
        out = self.lin(x)
        return out, poptorch.identity_loss(((out - y) ** 2).mean(), reduction="none")


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)


def _trained(**kwargs):
    torch.manual_seed(0)
    model = Regression()
    pm = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    return model, pm


def test_training_updates_the_device_copy_and_the_host_only_on_copy():
    model, pm = _trained()
    host_view = model.lin.weight.detach()  # shares the host tensor's memory, reads nothing from the device
    initial = host_view.clone()
    x, y = _data()
    pm(x, y)
    assert pm._emulator_copies == {"to_host": 0, "to_device": 1}  # uploaded once, when compiled
    assert torch.equal(host_view, initial)  # trained on the device only: no copy path ran
    pm(x, y)
    assert torch.equal(host_view, initial)
    pm.copyWeightsToHost()
    assert pm._emulator_copies == {"to_host": 1, "to_device": 1}
    assert pm._host_weights_version == 1
    assert not torch.equal(host_view, initial)  # copied in place into the host tensor
    assert not pm.copyWeightsToHostIfNeeded()  # already up to date


def _read_parameter(model):
    return model.lin.weight.shape  # any attribute of a parameter


def _named_parameters(model):
    return list(model.named_parameters())


def _parameters(model):
    return list(model.parameters())


def _state_dict(model):
    return model.state_dict()


def _torch_function(model):
    return torch.equal(model.lin.weight, model.lin.weight)  # torch.equal is PopTorch's own example


def _buffers(model):
    return list(model.buffers())


def _forward(model):
    return model.forward


@pytest.mark.parametrize("read", [_read_parameter, _named_parameters, _parameters, _state_dict,
                                  _torch_function, _buffers, _forward])
def test_reading_the_host_model_copies_back_once_per_run(read):
    model, pm = _trained()
    host_view = model.lin.weight.detach()
    initial = host_view.clone()
    pm(*_data())
    assert torch.equal(host_view, initial)
    read(model)
    assert pm._emulator_copies["to_host"] == 1 and not torch.equal(host_view, initial)
    read(model)
    assert pm._emulator_copies["to_host"] == 1  # not dirty any more
    pm(*_data())
    read(model)
    assert pm._emulator_copies["to_host"] == 2


def test_reading_through_the_wrapper_copies_too():
    model, pm = _trained()
    host_view = model.lin.weight.detach()
    initial = host_view.clone()
    pm(*_data())
    _ = pm.lin.weight  # PoplarExecutor.__getattr__ -> the user's module -> a parameter
    _ = pm.lin.weight.data
    assert pm._emulator_copies["to_host"] == 1 and not torch.equal(host_view, initial)


def test_host_writes_reach_the_device_only_through_copyWeightsToDevice():
    model, pm = _trained()
    x, y = _data()
    pm(x, y)
    with torch.no_grad():  # reading the parameter first pulls the device weights, then the write is host-only
        model.lin.weight.zero_()
        model.lin.bias.zero_()
    assert pm._emulator_copies["to_host"] == 1
    out, _ = pm(x, y)  # still the device weights
    assert not torch.equal(out, torch.zeros_like(out))
    # ... and the next implicit read overwrites the host write with the device values
    assert not torch.equal(model.lin.weight, torch.zeros_like(model.lin.weight))
    with torch.no_grad():
        model.lin.weight.zero_()
        model.lin.bias.zero_()
    pm.copyWeightsToDevice()
    assert pm._emulator_copies["to_device"] == 2
    out, _ = pm(x, y)
    assert torch.equal(out, torch.zeros_like(out))


def test_attach_and_load_state_dict_upload_the_host_weights():
    model, pm = _trained()
    x, y = _data()
    pm(x, y)
    pm.detachFromDevice()  # reads the weights back
    assert pm._emulator_copies == {"to_host": 1, "to_device": 1}
    with torch.no_grad():
        model.lin.weight.fill_(1.0)
        model.lin.bias.fill_(0.0)
    pm.attachToDevice()  # _on_device_attach: copyWeightsToDevice
    assert pm._emulator_copies["to_device"] == 2
    out, _ = pm(x, y)
    torch.testing.assert_close(out, x.sum(1, keepdim=True))
    state = {"lin.weight": torch.full((1, 3), 2.0), "lin.bias": torch.zeros(1)}
    pm.load_state_dict(state)
    assert pm._emulator_copies["to_device"] == 3
    out, _ = pm(x, y)
    torch.testing.assert_close(out, 2 * x.sum(1, keepdim=True))


def test_on_demand_connection_uploads_at_the_first_call():
    opts = poptorch.Options().connectionType(poptorch.ConnectionType.OnDemand)
    model, pm = _trained(options=opts)
    x, y = _data()
    pm.compile(x, y)
    assert pm.isCompiled() and not pm.isAttachedToDevice()
    assert pm._emulator_copies == {"to_host": 0, "to_device": 0}
    with torch.no_grad():
        model.lin.weight.fill_(3.0)  # before the first attach: this is what gets uploaded
        model.lin.bias.fill_(0.0)
    out, _ = pm(x, y)
    assert pm._emulator_copies["to_device"] == 1
    torch.testing.assert_close(out, 3 * x.sum(1, keepdim=True))


def test_inference_model_picks_up_the_training_model_weights():
    model, training = _trained()
    inference = poptorch.inferenceModel(model)  # wraps a shallow copy of the (wrapped) module
    x, y = _data()
    before, _ = inference(x, y)
    training(x, y)
    after, _ = inference(x, y)  # the training weights are read back and uploaded here
    assert training._emulator_copies["to_host"] == 1
    assert inference._emulator_copies["to_device"] == 2
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, model.lin(x))
    inference(x, y)
    assert inference._emulator_copies["to_device"] == 2  # nothing new


def test_inference_model_does_not_see_host_writes():
    model = torch.nn.Linear(3, 1)
    pm = poptorch.inferenceModel(model)
    x = torch.randn(2, 3)
    before = pm(x)
    with torch.no_grad():
        model.weight.add_(1.0)
    torch.testing.assert_close(pm(x), before)
    pm.copyWeightsToDevice()
    torch.testing.assert_close(pm(x), model(x))


def test_destroy_reads_back_and_unwraps_but_not_before_compilation():
    model, pm = _trained()
    assert type(model).__name__ == "PoptorchRegression" and isinstance(model, Regression)
    assert type(model.lin.weight).__name__ == "PoptorchParameter"
    pm.destroy()  # not compiled: PopTorch returns at once, the module stays wrapped
    assert type(model).__name__ == "PoptorchRegression"
    host_view = model.lin.weight.detach()
    initial = host_view.clone()
    pm(*_data())
    pm.destroy()
    assert not torch.equal(host_view, initial)
    assert type(model) is Regression and type(model.lin.weight) is torch.nn.Parameter
    poptorch.trainingModel(model)  # can be wrapped again


def test_a_dropped_executor_loses_the_device_weights(caplog):
    """The wrapped module references its executor weakly (PoplarExecutor.__init__: ``parent =
    weakref.ref(self)``): without an executor nothing copies the device weights back."""
    torch.manual_seed(0)
    model = Regression()
    initial = model.lin.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))(*_data())
        gc.collect()
    assert torch.equal(model.lin.weight, initial)
    assert "garbage-collected before its trained weights were copied" in caplog.text
