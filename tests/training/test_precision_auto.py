"""``runtime.precision: auto``: bf16 where the hardware has it natively (a CPU with AMX or AVX512-BF16, a
CUDA GPU with native bf16), else fp32; one INFO line at set-up says which and why. The CPU flags and
``torch.cuda.is_bf16_supported`` are mocked, so the choice does not depend on this machine."""
import logging

import pytest
import torch

from groupbert.config import load_config
from groupbert.training import precision as precision_mod
from groupbert.training.hardware import CPUFeatures
from groupbert.training.precision import autocast_dtype, resolve_precision
from groupbert.training.runtime import setup_runtime

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def _flags(monkeypatch, *flags):
    features = CPUFeatures(vendor="GenuineIntel", model_name="test CPU", family=6,
                           flags=frozenset({"avx2", "fma", *flags}), mhz=2000.0)
    monkeypatch.setattr(precision_mod, "cpu_features", lambda text=None: features)


@pytest.mark.parametrize("flags,name,reason", [
    (("avx512f", "avx512_bf16", "amx_bf16", "amx_tile"), "bf16", "CPU has AMX"),
    (("avx512f", "avx512_bf16"), "bf16", "CPU has AVX512-BF16"),
    (("avx512f",), "fp32", "CPU has no native bf16: no AVX512-BF16 or AMX"),
    ((), "fp32", "CPU has no native bf16: no AVX512-BF16 or AMX"),
])
def test_auto_on_cpu_follows_the_bf16_instructions(monkeypatch, flags, name, reason):
    _flags(monkeypatch, *flags)
    p = resolve_precision("auto", CPU)
    assert (p.name, p.reason) == (name, reason)
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if name == "bf16" else None)


@pytest.mark.parametrize("supported,name", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_native_bf16_support(monkeypatch, supported, name):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return supported
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    p = resolve_precision("auto", CUDA)
    assert p.name == name and "CUDA device" in p.reason
    assert asked == {"including_emulation": False}   # emulated bf16 (pre-Ampere) is slower than fp32


def test_explicit_settings_are_kept_whatever_the_hardware(monkeypatch):
    _flags(monkeypatch)   # no bf16 instructions
    for setting in ("fp32", "bf16", "fp16"):
        assert resolve_precision(setting, CPU).name == setting
    _flags(monkeypatch, "avx512_bf16", "amx_bf16")
    assert resolve_precision("fp32", CPU).name == "fp32"


def test_auto_on_the_ipu_backends_keeps_the_host_model_fp32(monkeypatch):
    _flags(monkeypatch, "avx512_bf16", "amx_bf16")
    p = resolve_precision("auto", CPU, on_ipu=True)
    assert p.name == "fp32" and "ipu.half" in p.reason


@pytest.mark.parametrize("flags,line", [
    (("avx512_bf16", "amx_bf16"), "precision auto -> bf16 (CPU has AMX)"),
    (("avx512_bf16",), "precision auto -> bf16 (CPU has AVX512-BF16)"),
    ((), "precision auto -> fp32 (CPU has no native bf16: no AVX512-BF16 or AMX)"),
])
def test_setup_logs_one_line_with_the_choice(monkeypatch, caplog, flags, line):
    _flags(monkeypatch, *flags)
    caplog.set_level(logging.INFO, logger="groupbert.training.runtime")
    runtime = setup_runtime(load_config(None, ["runtime.backend=cpu", "runtime.threads=2"]))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision")]
    assert lines == [line]
    assert runtime.precision.name == line.split("-> ")[1].split(" ")[0]
    with runtime.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == (torch.bfloat16 if runtime.precision.name == "bf16" else torch.float32)


def test_setup_logs_an_explicit_setting(monkeypatch, caplog):
    _flags(monkeypatch, "avx512_bf16")
    caplog.set_level(logging.INFO, logger="groupbert.training.runtime")
    runtime = setup_runtime(load_config(None, ["runtime.backend=cpu", "runtime.threads=2",
                                               "runtime.precision=fp32"]))
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision")] == [
        "precision fp32 (set by runtime.precision)"]
    assert runtime.precision.name == "fp32" and runtime.precision.dtype is None
