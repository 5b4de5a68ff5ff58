"""Compilation has no side effects on the caller's inputs or module; a wrapped module stays saveable.

Sources (graphcore/poptorch, branch sdk-release-3.4):
- python/_poplar_executor.py ``PoplarExecutor._preprocessGraph`` (the trace gets ``in_tensors.clone()``,
  narrowed to one micro-batch) and ``_compileWithDispatch`` (the trace runs on IPU copies of the parameters
  and buffers; the CPU tensors are put back afterwards; weights reach the device by
  ``copyWeightsToDevice`` on attach);
- tests/inplace_test.py ``test_inplace_add``: an input updated in place by ``forward`` is updated once per
  call (1 -> 2 -> 3), not once more at compilation;
- python/_impl.py ``registerWrapperType``/``_pickleUnwrapObject``/``_restoreWrapperIfNecessary`` and the
  ``PoptorchModel.state_dict`` of ``PoplarExecutor.__init__``: pickling a wrapped module stores an unwrapped
  copy, ``copy.copy`` keeps the wrapper, ``state_dict()`` returns unwrapped tensors loadable without PopTorch;
- python/_impl.py ``errorOnBufferOrParameterAddressChanges`` (tests/buffers_test.py
  ``test_error_on_redefine_buffer``, ``test_error_on_remove_buffer``).
"""
import copy
import io
import pickle

import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


def test_in_place_input_update_happens_once_per_call():
    class Model(torch.nn.Module):
        def forward(self, x):
            x += 1

    pm = poptorch.inferenceModel(Model())
    tensor_in = torch.Tensor([1.0])
    assert pm(tensor_in) is None
    assert tensor_in == 2.0
    assert pm(tensor_in) is None
    assert tensor_in == 3.0
    assert pm(torch.Tensor([1.0])) is None
    assert tensor_in == 3.0


def test_in_place_input_update_in_training():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def forward(self, x, count):
            count += 1
            return poptorch.identity_loss(self.lin(x).sum(), reduction="sum")

    pm = poptorch.trainingModel(Model())
    count = torch.zeros(2, 1)
    pm(torch.ones(2, 1), count)
    assert count.tolist() == [[1.0], [1.0]]
    pm.destroy()


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return poptorch.identity_loss(self.lin(x).sum(), reduction="sum")


def test_the_trace_does_not_touch_the_host_module():
    model = Counter()
    pm = poptorch.trainingModel(model)
    pm.compile(torch.ones(1, 2))
    assert model.calls == 0
    pm(torch.ones(1, 2))
    assert model.calls == 1  # read back implicitly: one run, the trace is not counted


def test_wrapping_adds_no_attribute_and_the_module_stays_saveable(tmp_path):
    model = Counter()
    attributes = set(model.__dict__)
    pm = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    assert set(model.__dict__) == attributes  # nothing (no weak reference) stored on the module
    initial = model.lin.weight.detach().clone()
    pm(torch.ones(1, 2))

    torch.save(model, tmp_path / "model.pt")  # pickling reads the device weights back first
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert type(loaded) is Counter and type(loaded.lin.weight) is torch.nn.Parameter
    assert type(loaded.calls) is torch.Tensor
    assert not torch.equal(loaded.lin.weight, initial) and loaded.calls == 1

    torch.save(model.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # plain tensors only
    assert all(type(v) is torch.Tensor for v in state.values())
    torch.testing.assert_close(state["lin.weight"], loaded.lin.weight)

    buffer = io.BytesIO()
    torch.save(model.lin.state_dict(keep_vars=True), buffer)  # parameters themselves: pickled unwrapped
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False)["weight"]) is torch.nn.Parameter
    assert type(pickle.loads(pickle.dumps(model))) is Counter

    shallow = copy.copy(model)  # a copy keeps the wrapper (PopTorch: _restoreWrapperIfNecessary)
    assert type(shallow) is type(model) and type(shallow).__name__ == "PoptorchCounter"
    assert shallow.lin is model.lin


def test_reassigning_a_buffer_in_forward_is_refused():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("y", torch.tensor([2.0]))

        def forward(self, x):
            x = x + 1
            self.y = x
            return x

    model = Model()
    original = model.y
    with pytest.raises(poptorch.Error, match=r"^Buffer y is reassigned within the model when calling the forward "
                                             r"method\. This is not supported\. Consider using "
                                             r"self\.y\.copy_\(src\) to copy data from a source tensor, where src "
                                             r"is the name of the source tensor\.$"):
        poptorch.inferenceModel(model)(torch.tensor([5.0]))
    assert model.y is original and model.y == 2.0


def test_removing_a_buffer_in_forward_is_refused():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("y", torch.tensor([2]))

        def forward(self, x):
            if "y" in self._buffers:
                del self._buffers["y"]
            return x + 1

    model = Model()
    with pytest.raises(poptorch.Error, match=r"^Buffer y is removed from the model when calling the forward "
                                             r"method\.$"):
        poptorch.inferenceModel(model)(torch.tensor([5.0]))
    assert "y" in model._buffers
