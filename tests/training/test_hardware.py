"""Peak rates (groupbert.training.hardware): /proc/cpuinfo parsing on fake texts, the CPU FLOPs-per-cycle
table, the CUDA table by device name (torch.cuda mocked), the IPU figures, the ipu-model CPU fallback and
the ``runtime.peak_tflops`` override."""
import pytest
import torch

from groupbert.config import ConfigError, load_config
from groupbert.ipu import planner
from groupbert.training import hardware
from groupbert.training.hardware import (
    Peak,
    cpu_features,
    cpu_flops_per_cycle,
    cpu_peak,
    devices_in_use,
    native_bf16,
    peak_flops,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def _cpuinfo(vendor, family, name, mhz, flags, processors=2):
    block = (f"processor\t: {{i}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 1\n"
             f"model name\t: {name}\n" + (f"cpu MHz\t\t: {mhz}\n" if mhz else "") + f"flags\t\t: {flags}\n\n")
    return "".join(block.format(i=i) for i in range(processors))


BASE = "fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx"
SPR = _cpuinfo("GenuineIntel", 6, "Intel(R) Xeon(R) Platinum 8480+", "2000.000",
               f"{BASE} fma avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8")
ZEN4 = _cpuinfo("AuthenticAMD", 25, "AMD EPYC", "2596.134", f"{BASE} fma avx2 avx512f avx512_bf16 avx512_vnni")
ZEN5 = _cpuinfo("AuthenticAMD", 26, "AMD EPYC 9005", "3000.000", f"{BASE} fma avx2 avx512f avx512_bf16")
AVX2 = _cpuinfo("GenuineIntel", 6, "Intel(R) Core(TM) i7-4770", "3400.000", f"{BASE} fma avx2")
BARE = _cpuinfo("GenuineIntel", 6, "QEMU Virtual CPU", "1000.000", "fpu")


@pytest.fixture(autouse=True)
def no_cpufreq(monkeypatch, tmp_path):
    """The fake texts' ``cpu MHz`` is the clock: no sysfs cpufreq file."""
    monkeypatch.setattr(hardware, "CPUFREQ_MAX_KHZ", tmp_path / "absent")


def test_cpuinfo_is_parsed_from_the_first_processor():
    f = cpu_features(ZEN4)
    assert (f.vendor, f.family, f.model_name, f.mhz) == ("AuthenticAMD", 25, "AMD EPYC", 2596.134)
    assert {"avx512f", "avx512_bf16"} <= f.flags and "amx_bf16" not in f.flags
    empty = cpu_features("")
    assert (empty.vendor, empty.family, empty.mhz, empty.flags) == ("", None, None, frozenset())


@pytest.mark.parametrize("text,native", [(SPR, "AMX"), (ZEN4, "AVX512-BF16"), (AVX2, None), (BARE, None)])
def test_native_bf16(text, native):
    assert native_bf16(cpu_features(text)) == native


@pytest.mark.parametrize("text,fp32,bf16,fp16", [
    (SPR, 64, 1024, 64),     # 2 x 512-bit FMA; AMX; AVX512-FP16 but no amx_fp16: the fp32 rate
    (ZEN4, 32, 64, 32),      # AVX-512 double-pumped on 256-bit datapaths; AVX512-BF16 doubles it
    (ZEN5, 64, 128, 64),     # full 512-bit datapaths
    (AVX2, 32, 32, 32),      # no native bf16: the fp32 rate
    (BARE, 16, 16, 16),
])
def test_flops_per_cycle_table(text, fp32, bf16, fp16):
    f = cpu_features(text)
    assert [cpu_flops_per_cycle(f, d)[0] for d in ("fp32", "bf16", "fp16")] == [fp32, bf16, fp16]


def test_amx_fp16_runs_fp16_at_the_amx_rate():
    f = cpu_features(SPR.replace("amx_int8", "amx_int8 amx_fp16"))
    assert cpu_flops_per_cycle(f, "fp16") == (1024, "AMX-FP16")


def test_cpu_peak_is_threads_x_clock_x_flops_per_cycle():
    p = cpu_peak("bf16", cpu_features(ZEN4), cores=2)
    assert p.flops_per_s == pytest.approx(2 * 2.596134e9 * 64)
    assert p.source == "AMD EPYC: 2 cores x 2.60 GHz x 64 bf16 FLOP/cycle (AVX512-BF16)"
    p = cpu_peak("bf16", cpu_features(SPR), cores=56)
    assert p.flops_per_s == pytest.approx(56 * 2.0e9 * 1024) and "AMX" in p.source
    p = cpu_peak("fp32", cpu_features(AVX2), cores=4)
    assert p.flops_per_s == pytest.approx(4 * 3.4e9 * 32) and "AVX2 + FMA" in p.source
    assert cpu_peak("fp32", cpu_features(BARE), cores=1).flops_per_s == pytest.approx(1e9 * 16)
    # cores default to torch's intra-op threads
    assert cpu_peak("fp32", cpu_features(BARE)).flops_per_s == pytest.approx(torch.get_num_threads() * 16e9)


def test_cpufreq_maximum_wins_over_cpu_mhz(monkeypatch, tmp_path):
    khz = tmp_path / "cpuinfo_max_freq"
    khz.write_text("3700000\n")
    monkeypatch.setattr(hardware, "CPUFREQ_MAX_KHZ", khz)
    p = cpu_peak("fp32", cpu_features(ZEN4), cores=1)
    assert p.flops_per_s == pytest.approx(3.7e9 * 32) and "3.70 GHz" in p.source


def test_no_clock_means_no_peak():
    text = _cpuinfo("GenuineIntel", 6, "Mystery", None, "avx2 fma")
    p = cpu_peak("fp32", cpu_features(text), cores=2)
    assert p.flops_per_s is None and "clock unknown" in p.source


def test_peak_flops_on_cpu_reads_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda text=None: cpu_features(ZEN4))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cfg = load_config(None)
    assert peak_flops(CPU, torch.bfloat16, cfg).flops_per_s == pytest.approx(2 * 2.596134e9 * 64)
    assert peak_flops(CPU, None, cfg).flops_per_s == pytest.approx(2 * 2.596134e9 * 32)


@pytest.mark.parametrize("name,dtype,tf32,expected", [
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, False, 312e12),
    ("NVIDIA A100 80GB PCIe", torch.float16, False, 312e12),
    ("NVIDIA A100-SXM4-40GB", None, False, 19.5e12),
    ("NVIDIA A100-SXM4-40GB", None, True, 156e12),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989.4e12),
    ("NVIDIA H100 80GB HBM3", None, True, 494.7e12),
    ("NVIDIA H100 80GB HBM3", None, False, 66.9e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, False, 756e12),
    ("NVIDIA H100 PCIe", None, True, 378e12),
    ("NVIDIA H100 PCIe", None, False, 51.2e12),
    ("NVIDIA H200", torch.bfloat16, False, 989.4e12),
])
def test_cuda_table_by_device_name(monkeypatch, name, dtype, tf32, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    p = peak_flops(CUDA, dtype, load_config(None, ["runtime.backend=cuda"]))
    assert p.flops_per_s == expected
    assert p.source.startswith(name) and "TFLOPS" in p.source


@pytest.mark.parametrize("name", ["Tesla V100-SXM2-16GB", "NVIDIA H100 NVL", "NVIDIA GeForce RTX 4090"])
def test_unknown_gpu_has_no_peak(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    p = peak_flops(CUDA, torch.bfloat16, load_config(None))
    assert p.flops_per_s is None and name in p.source and "runtime.peak_tflops" in p.source


def test_ipu_peaks_are_the_planners_gc200_figures_times_the_ipus_in_use(monkeypatch):
    import groupbert.ipu
    monkeypatch.setattr(groupbert.ipu, "USING_EMULATOR", False)  # as with the Poplar SDK's PopTorch
    cfg = load_config(None, ["runtime.backend=ipu", "ipu.half=true", "ipu.layers_per_ipu=[0,4,4,4]",
                             "ipu.replication_factor=4", "model.num_layers=12", "train.gradient_accumulation=16"])
    p = peak_flops(CPU, None, cfg)   # the host device is the CPU; the IPU's dtype is ipu.half's
    assert p.flops_per_s == planner.PEAK_FLOPS_FP16 == 250e12 and "GC200" in p.source
    assert devices_in_use(cfg, world_size=1) == 16
    cfg.ipu.half = False
    assert peak_flops(CPU, None, cfg).flops_per_s == planner.PEAK_FLOPS_FP32 == 62.5e12
    cfg.ipu.layers_per_ipu = None
    assert devices_in_use(cfg, world_size=1) == 4


def test_the_built_in_emulator_runs_on_the_cpu(monkeypatch):
    import groupbert.ipu
    monkeypatch.setattr(groupbert.ipu, "USING_EMULATOR", True)
    monkeypatch.setattr(hardware, "cpu_features", lambda text=None: cpu_features(ZEN4))
    cfg = load_config(None, ["runtime.backend=ipu", "ipu.half=true", "ipu.replication_factor=4"])
    p = peak_flops(CPU, None, cfg)
    assert p.source.startswith("the built-in PopTorch emulator computes on the CPU: AMD EPYC") and "fp32" in p.source
    assert p.flops_per_s == pytest.approx(torch.get_num_threads() * 2.596134e9 * 32)
    assert devices_in_use(cfg, world_size=1) == 1


def test_ipu_model_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda text=None: cpu_features(ZEN4))
    p = peak_flops(CPU, torch.bfloat16, load_config(None, ["runtime.backend=ipu-model"]))
    assert p.source.startswith("ipu-model computes on the CPU: AMD EPYC")
    assert "fp32" in p.source   # the emulator computes in fp32 whatever the host autocast
    assert p.flops_per_s == pytest.approx(torch.get_num_threads() * 2.596134e9 * 32)


def test_host_devices_are_the_torchrun_processes():
    assert devices_in_use(load_config(None), world_size=1) == 1
    assert devices_in_use(load_config(None, ["ipu.replication_factor=4"]), world_size=8) == 8


def test_peak_tflops_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    cfg = load_config(None, ["runtime.peak_tflops=125"])
    for device, dtype in ((CUDA, torch.bfloat16), (CPU, None)):
        p = peak_flops(device, dtype, cfg)
        assert p == Peak(125e12, "runtime.peak_tflops: 125 TFLOPS per device") and p.tflops == 125
    with pytest.raises(ConfigError, match="runtime.peak_tflops"):
        load_config(None, ["runtime.peak_tflops=0"])
    with pytest.raises(ConfigError, match="runtime.peak_tflops"):
        load_config(None, ["runtime.peak_tflops=fast"])
