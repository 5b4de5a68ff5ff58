"""How the C++ ops plug into the application: the config switch, the IPU path, the emulator registry."""
import pytest
import torch
import torch.nn.functional as F

import custom_ops
from custom_ops import _build
from groupbert.config import ConfigError, load_config
from groupbert.ipu import poptorch
from groupbert.ipu.pipeline import deparallelize, parallelize
from groupbert.models import GroupBertForPreTraining


@pytest.fixture
def mode_reset():
    yield
    _build.set_mode(None)


def test_config_switch_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("runtime:\n  custom_ops: off\n")
    assert load_config(str(path)).runtime.custom_ops == "off"
    path.write_text("runtime:\n  custom_ops: maybe\n")
    with pytest.raises(ConfigError, match="runtime.custom_ops"):
        load_config(str(path))


def test_bad_mode_names_the_choices(mode_reset, monkeypatch):
    monkeypatch.setenv(_build.ENV_MODE, "fast")
    with pytest.raises(custom_ops.CustomOpsError, match="auto, on, off"):
        _build.mode()


def test_off_mode_reports_the_reference(mode_reset):
    _build.set_mode("off")
    assert all(v.startswith("reference") for v in custom_ops.status().values())


def test_ipu_pipeline_switches_the_conv_to_nn_conv1d(tiny_model_config):
    model = GroupBertForPreTraining(tiny_model_config(vocab_size=64, num_heads=2, intermediate_size=64,
                                                      max_positions=32, conv_group_size=16))
    convs = [m for m in model.modules() if hasattr(m, "use_custom_op")]
    assert convs and all(m.use_custom_op for m in convs)
    parallelize(model, [1, 1])
    assert not any(m.use_custom_op for m in convs)  # PopTorch lowers nn.Conv1d(groups=...) itself
    deparallelize(model)
    assert all(m.use_custom_op for m in convs)


def test_emulator_custom_op_registry_runs_the_grouped_conv():
    assert ("groupbert", "GroupedConv1d", 1) in poptorch.registered_custom_ops()
    torch.manual_seed(0)
    x = torch.randn(2, 9, 32, requires_grad=True)
    conv = torch.nn.Conv1d(32, 32, 5, padding=2, groups=4)
    (y,) = poptorch.custom_op([x, conv.weight, conv.bias], "GroupedConv1d", "groupbert", 1, example_outputs=[x],
                              attributes={"groups": 4})
    expected = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=2, groups=4).transpose(1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
