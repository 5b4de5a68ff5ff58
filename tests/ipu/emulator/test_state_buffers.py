"""Replicas own their buffers, as in PopTorch 3.4 / PopART 3.4.

Sources:
- graphcore/poptorch (sdk-release-3.4) tests/buffers_test.py: ``test_unsynchronised_replicated_buffers``
  (with ``broadcastBuffers(False)`` each replica accumulates its own input into its own buffer),
  ``test_failing_on_replicas`` (an in-place buffer update with replicas and the default
  ``broadcastBuffers(True)`` raises), ``test_buffer_implicit_copy`` (BatchNorm running statistics reach the
  host when read), ``test_copy_named_buffer_to_device_no_opt`` (host buffer writes do not reach an
  inference model's device); poptorch/source/InplaceOps.cpp (the error text, raised when
  ``hasInputReplication() && broadcastBuffers()``, popart_compiler/source/SessionOptions.cpp);
- docs/user_guide/overview.rst ("When running an inference model ... any buffers which your model modifies
  will not be implicitly copied to the host"; "You can make each replica use its own buffer by setting ...
  broadcastBuffers to False");
- graphcore/popart (sdk-release-3.4) willow/src/popx/devicex.cpp: ``H2dWeightStreamCallback`` (every replica
  of a group receives the group's host value: the upload broadcasts) and the d2h weight streams (a
  variable is returned by the first replica of its group, ``returning = (i == 0) || returnAll``): with the
  default single group the host receives replica 0's copy, no reduction.
"""
import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class ReplicaBufferModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("buffer", torch.zeros(1, 2))

    def forward(self, x):
        self.buffer.copy_(self.buffer + x)
        return poptorch.identity_loss(self.buffer, reduction="none")


def test_each_replica_updates_its_own_buffer_and_the_host_gets_replica_0s():
    opts = poptorch.Options().replicationFactor(2).deviceIterations(1).broadcastBuffers(False)
    model = ReplicaBufferModel()
    pm = poptorch.inferenceModel(model, opts)
    x = torch.tensor([[9.0], [2.0]])
    for _ in range(50):
        y = pm(x)
    assert y[0][-1] == x[0] * 50
    assert y[1][-1] == x[1] * 50
    assert torch.equal(model.buffer, torch.zeros(1, 2))  # an inference model never copies back implicitly
    pm.copyWeightsToHost()
    assert torch.equal(model.buffer, torch.full((1, 2), 450.0))  # replica 0's copy


def test_the_upload_broadcasts_the_host_buffer_to_every_replica():
    opts = poptorch.Options().replicationFactor(2).broadcastBuffers(False)
    model = ReplicaBufferModel()
    pm = poptorch.inferenceModel(model, opts)
    x = torch.tensor([[1.0], [2.0]])
    pm(x)
    with torch.no_grad():
        model.buffer.fill_(10.0)
    y = pm(x)  # host writes are not seen ...
    assert y[:, 0].tolist() == [2.0, 4.0]
    pm.copyWeightsToDevice()  # ... until uploaded, to both replicas
    y = pm(x)
    assert y[:, 0].tolist() == [11.0, 12.0]


def test_in_place_buffer_update_with_broadcast_buffers_is_refused():
    opts = poptorch.Options().replicationFactor(2)
    pm = poptorch.inferenceModel(ReplicaBufferModel(), opts)
    with pytest.raises(poptorch.Error, match=r"^PopTorch does not support broadcasting buffers\. If your model is "
                                             r"able to tolerate buffers becoming out of sync between replicas, "
                                             r"you can disable buffer broadcasting using "
                                             r"poptorch\.Options\.broadcastBuffers\(False\)\.$"):
        pm(torch.tensor([[1.0], [2.0]]))
    # every replica reads the same data: no input replication, nothing to go out of sync
    same = poptorch.Options().replicationFactor(2).inputReplicaGrouping(2, poptorch.CommGroupType.Consecutive)
    assert poptorch.inferenceModel(ReplicaBufferModel(), same)(torch.tensor([[3.0]])).shape == (2, 2)


class BatchNormModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4, momentum=0.1)
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, y):
        return torch.nn.functional.mse_loss(self.lin(self.bn(x)), y)


def test_batchnorm_statistics_are_per_replica_and_replica_0_reaches_the_host():
    torch.manual_seed(0)
    model = BatchNormModel()
    reference = BatchNormModel()
    reference.load_state_dict(model.state_dict())
    opts = poptorch.Options().replicationFactor(2).deviceIterations(3)
    pm = poptorch.trainingModel(model, opts, torch.optim.SGD(model.parameters(), lr=0.0))
    x, y = torch.randn(3 * 2 * 5, 4), torch.randn(3 * 2 * 5, 1)
    pm(x, y)
    # replica 0 saw micro-batches 0, 2, 4 (PopART's order [device iteration, replica, micro-batch])
    with torch.no_grad():
        for d in range(3):
            reference.bn(x.view(3, 2, 5, 4)[d, 0])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model.bn, name), getattr(reference.bn, name))  # implicit copy
    assert pm._emulator_copies["to_host"] == 1


def test_batchnorm_running_mean_is_copied_implicitly():
    """tests/buffers_test.py ``test_buffer_implicit_copy``."""
    momentum = 0.1

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(10, momentum=momentum)
            self.loss = torch.nn.MSELoss()

        def forward(self, x, target):
            y = self.bn(x)
            return y, self.loss(y, target)

    model = Model()
    inputs = torch.ones([4, 10])
    pm = poptorch.trainingModel(model)
    pm(inputs, inputs + 1)
    torch.testing.assert_close(model.bn.running_mean, inputs[0, :] * momentum)
    pm.copyWeightsToHost()
    torch.testing.assert_close(model.bn.running_mean, inputs[0, :] * momentum)
