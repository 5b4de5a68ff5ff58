"""Update-size metrics against hand-computed values on a known update."""
import math

import pytest
import torch
import torch.nn as nn

from optimizers.update_metrics import UpdateMetrics


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_metrics_of_a_known_update():
    torch.manual_seed(0)
    net = Net()
    m = UpdateMetrics(net, every=2)
    assert not m.arm(1) and not m.armed
    assert m.arm(2)
    x = torch.randn(5, 4)
    net(x)
    m.before_update()
    w_a0, w_b0, bias0 = net.a.weight.detach().clone(), net.b.weight.detach().clone(), net.a.bias.detach().clone()
    d_a, d_b, d_bias = torch.randn(3, 4) * 0.1, torch.randn(2, 3) * 0.1, torch.randn(3) * 0.1
    with torch.no_grad():
        net.a.weight += d_a
        net.b.weight += d_b
        net.a.bias += d_bias
    rec = m.after_update()

    total = math.sqrt(float(d_a.norm() ** 2 + d_b.norm() ** 2 + d_bias.norm() ** 2))
    assert rec["update_norm"] == pytest.approx(total, rel=1e-5)
    w1 = w_a0 + d_a
    cos = float((w_a0 * w1).sum() / (w_a0.norm() * w1.norm()))
    assert rec["update_angle/a.weight"] == pytest.approx(math.acos(cos), rel=1e-4)
    assert rec["update_rrc/a"] == pytest.approx(float((x @ d_a.T).norm() / (x @ w_a0.T).norm()), rel=1e-5)
    hidden = torch.relu(x @ w_a0.T + bias0)  # b's input as seen in the captured forward
    assert rec["update_rrc/b"] == pytest.approx(float((hidden @ d_b.T).norm() / (hidden @ w_b0.T).norm()), rel=1e-5)
    assert rec["update_rrc_max"] == max(rec["update_rrc/a"], rec["update_rrc/b"])
    assert not m.armed and m.after_update() == {}  # disarmed until the next multiple of `every`


def test_no_update_gives_zeros_and_hooks_are_removed():
    net = Net()
    m = UpdateMetrics(net, every=1)
    m.arm(1)
    net(torch.randn(2, 4))
    m.before_update()
    rec = m.after_update()
    assert rec["update_norm"] == 0 and rec["update_angle_max"] == pytest.approx(0, abs=1e-3)
    assert not net.a._forward_hooks and not net.b._forward_hooks
