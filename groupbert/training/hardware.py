"""What the hardware a run uses can do at most: peak FLOP rates (the denominator of MFU) and the CPU's
instruction-set features (which ``runtime.precision: auto`` reads).

MFU, model FLOPs utilisation (Chowdhery et al. 2022, "PaLM", arXiv:2204.02311, appendix B), is the model
FLOPs a run achieves per second (``groupbert.models.flops``) over the peak of every device it uses:
``devices_in_use`` devices (torchrun processes, or on IPUs replicas x IPUs per replica) x
:func:`peak_flops` of one. Peaks are the dense (no sparsity) matmul rates of the dtype the matmuls run in.

- CPU: cores x clock x FLOPs per cycle per core (:data:`CPU_FLOPS_PER_CYCLE`). Cores are the torch
  intra-op threads (``torch.get_num_threads()``: what the run computes with); the clock is the cpufreq
  maximum where sysfs has it, else ``cpu MHz`` of ``/proc/cpuinfo`` (a VM's nominal clock).
- CUDA: :data:`CUDA_PEAKS`, by device name (NVIDIA datasheets); a GPU not in the table has no peak
  (``mfu`` is then null), unless ``runtime.peak_tflops`` gives one. fp32 on CUDA runs at the fp32 rate
  unless ``torch.backends.cuda.matmul.allow_tf32`` lets the matmuls use TF32.
- IPU (``runtime.backend: ipu``): Graphcore GC200, the planner's figures (``groupbert.ipu.planner``):
  fp16 with ``ipu.half``, else fp32, per IPU. ``ipu-model`` (PopTorch's IPU Model or the built-in
  emulator) computes on the CPU in fp32, so its peak is the CPU's, and the source says so.
- ``runtime.peak_tflops`` (per device) replaces the table for any backend.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
CPUFREQ_MAX_KHZ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")

# --------------------------------------------------------------------------------------------------
# FLOPs per cycle per core (2 per fused multiply-add): FMA units x lanes x 2.
# - Intel AVX-512 server cores (Skylake-SP to Sapphire Rapids): 2 x 512-bit FMA units (ports 0 and 5) x
#   16 fp32 lanes x 2 = 64 (Intel 64 and IA-32 Architectures Optimization Reference Manual, "Intel AVX-512"
#   chapter; SKUs with a single 512-bit FMA unit reach half of this).
# - AMD family 25 (19h: Zen 3, Zen 4): 2 x 256-bit FMA pipes x 8 lanes x 2 = 32; Zen 4 runs AVX-512 on its
#   256-bit datapaths, two passes per 512-bit instruction ("double pumped"), so the rate stays 32
#   (AMD Software Optimization Guide for AMD Family 19h Processors, pub. 56665, "Floating-Point Unit").
# - AMD family >= 26 (1Ah: Zen 5): full 512-bit datapaths, 2 FMA pipes x 16 lanes x 2 = 64 (AMD Software
#   Optimization Guide for AMD Family 1Ah Processors, pub. 58455).
# - AVX2 + FMA (Intel Haswell onwards, AMD Zen 2): 2 x 256-bit FMA x 8 x 2 = 32 (the same manuals).
# - Otherwise (SSE/AVX without FMA): a 256-bit add and a 256-bit multiply per cycle, 16.
# - bf16: Intel AMX (Sapphire Rapids' tile matrix multiply unit): 1024 bf16 FLOPs per cycle per core
#   (Intel, "Intel Advanced Matrix Extensions (Intel AMX)" overview and Architecture Day 2021: 2048 int8 /
#   1024 bf16 operations per cycle per core); AVX512-BF16 (``VDPBF16PS``: two bf16 products per fp32 lane)
#   twice the core's fp32 rate; without either, bf16 matmuls run at (at most) the fp32 rate.
# - fp16: AMX-FP16 (Granite Rapids) at the AMX rate; otherwise the fp32 rate (PyTorch's CPU fp16 matmuls).
CPU_FLOPS_PER_CYCLE = {
    "intel-avx512": 64,
    "amd-zen3-zen4": 32,
    "amd-zen5": 64,
    "avx2-fma": 32,
    "baseline": 16,
    "amx": 1024,
}

# Dense tensor-core / CUDA-core peaks per GPU, FLOP/s (NVIDIA A100 and H100 datasheets; the H200 has the
# H100 SXM's compute). Matched on the lower-cased device name, first match wins.
_H100_SXM = {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
CUDA_PEAKS = [
    (("h200",), "H200 (H100 SXM compute)", _H100_SXM),
    (("h100", "pcie"), "H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    (("h100", "nvl"), None, None),   # H100 NVL: other clocks, not in the table
    (("h100",), "H100 SXM", _H100_SXM),
    (("a100",), "A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
]

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", None: "fp32"}


@dataclass(frozen=True)
class CPUFeatures:
    """The first processor's entry of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    vendor: str = ""                 # GenuineIntel | AuthenticAMD | ...
    model_name: str = ""
    family: Optional[int] = None     # "cpu family": AMD 25 = Zen 3/4, 26 = Zen 5; Intel 6
    flags: frozenset = field(default_factory=frozenset)
    mhz: Optional[float] = None      # "cpu MHz"


@dataclass(frozen=True)
class Peak:
    """A device's peak rate for the run's matmul dtype, and where the figure comes from."""
    flops_per_s: Optional[float]     # None: unknown (MFU is then null)
    source: str

    @property
    def tflops(self) -> Optional[float]:
        return None if self.flops_per_s is None else self.flops_per_s / 1e12


def cpu_features(text: Optional[str] = None) -> CPUFeatures:
    """Parse ``/proc/cpuinfo`` (or ``text``, its contents); the first processor's entry is used."""
    if text is None:
        try:
            text = CPUINFO.read_text(errors="replace")
        except OSError:
            return CPUFeatures()
    entry: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if entry:
                break  # end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            entry.setdefault(key.strip().lower(), value.strip())
    try:
        family = int(entry["cpu family"])
    except (KeyError, ValueError):
        family = None
    try:
        mhz = float(entry["cpu mhz"])
    except (KeyError, ValueError):
        mhz = None
    return CPUFeatures(vendor=entry.get("vendor_id", ""), model_name=entry.get("model name", ""), family=family,
                       flags=frozenset(entry.get("flags", "").split()), mhz=mhz)


def native_bf16(features: CPUFeatures) -> Optional[str]:
    """The CPU's bf16 matmul instructions: ``"AMX"``, ``"AVX512-BF16"``, or None (bf16 is then emulated)."""
    if "amx_bf16" in features.flags:
        return "AMX"
    if "avx512_bf16" in features.flags:
        return "AVX512-BF16"
    return None


def cpu_flops_per_cycle(features: CPUFeatures, dtype_name: str) -> tuple[int, str]:
    """(FLOPs per cycle per core for ``dtype_name`` fp32 | bf16 | fp16, the instructions that give it)."""
    flags, amd = features.flags, features.vendor == "AuthenticAMD"
    if amd and features.family is not None and features.family >= 26:
        fp32, how = CPU_FLOPS_PER_CYCLE["amd-zen5"], "AVX-512, AMD family 26+"
    elif amd and features.family == 25:
        how = "AVX-512 on 256-bit datapaths" if "avx512f" in flags else "AVX2 + FMA"
        fp32, how = CPU_FLOPS_PER_CYCLE["amd-zen3-zen4"], f"{how}, AMD family 25"
    elif "avx512f" in flags and not amd:
        fp32, how = CPU_FLOPS_PER_CYCLE["intel-avx512"], "AVX-512, 2 FMA units"
    elif "avx2" in flags and "fma" in flags:
        fp32, how = CPU_FLOPS_PER_CYCLE["avx2-fma"], "AVX2 + FMA"
    else:
        fp32, how = CPU_FLOPS_PER_CYCLE["baseline"], "no FMA"
    if dtype_name == "bf16":
        native = native_bf16(features)
        if native == "AMX":
            return CPU_FLOPS_PER_CYCLE["amx"], "AMX"
        if native == "AVX512-BF16":
            return 2 * fp32, "AVX512-BF16"
        return fp32, f"{how}; no native bf16"
    if dtype_name == "fp16":
        if "amx_fp16" in flags:
            return CPU_FLOPS_PER_CYCLE["amx"], "AMX-FP16"
        return fp32, f"{how}; fp16 at the fp32 rate"
    return fp32, how


def cpu_clock_ghz(features: CPUFeatures) -> tuple[Optional[float], str]:
    """(clock in GHz, where from): the cpufreq maximum when sysfs has it, else ``cpu MHz``."""
    try:
        return int(CPUFREQ_MAX_KHZ.read_text().strip()) / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    if features.mhz:
        return features.mhz / 1e3, "cpu MHz"
    return None, "no clock in /proc/cpuinfo"


def cpu_peak(dtype_name: str, features: Optional[CPUFeatures] = None, cores: Optional[int] = None) -> Peak:
    """This process's CPU peak: intra-op threads x clock x FLOPs/cycle/core for ``dtype_name``."""
    features = cpu_features() if features is None else features
    cores = torch.get_num_threads() if cores is None else cores
    name = features.model_name or "CPU"
    ghz, _ = cpu_clock_ghz(features)
    if ghz is None:
        return Peak(None, f"{name}: clock unknown (no /proc/cpuinfo cpu MHz or cpufreq)")
    per_cycle, how = cpu_flops_per_cycle(features, dtype_name)
    return Peak(cores * ghz * 1e9 * per_cycle,
                f"{name}: {cores} cores x {ghz:.2f} GHz x {per_cycle} {dtype_name} FLOP/cycle ({how})")


def cuda_peak(device, dtype_name: str) -> Peak:
    """The table's dense peak for the GPU's name (``torch.cuda.get_device_name``)."""
    gpu = torch.cuda.get_device_name(device)
    if dtype_name == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        dtype_name = "tf32"
    lower = gpu.lower()
    for words, label, peaks in CUDA_PEAKS:
        if all(w in lower for w in words):
            if peaks is None:
                break
            return Peak(peaks[dtype_name], f"{gpu}: {label} dense {dtype_name} {peaks[dtype_name] / 1e12:g} TFLOPS "
                                           "(NVIDIA datasheet)")
    return Peak(None, f"{gpu}: not in the peak table (groupbert/training/hardware.py); set runtime.peak_tflops")


def peak_flops(device, dtype: Optional[torch.dtype], cfg) -> Peak:
    """One device's peak for matmuls in ``dtype`` (None: fp32, no autocast) on the run's backend
    (``cfg``: the RunConfig), or ``runtime.peak_tflops`` when set (module docstring)."""
    dtype_name = _DTYPE_NAMES.get(dtype, "fp32")
    override = getattr(cfg.runtime, "peak_tflops", None)
    if override is not None:
        return Peak(override * 1e12, f"runtime.peak_tflops: {override:g} TFLOPS per device")
    backend = cfg.runtime.backend
    if backend == "ipu":
        from groupbert.ipu.planner import ipu_peak  # GC200 datasheet figures
        ipu = ipu_peak(cfg)
        if ipu is None:  # no Poplar SDK: the built-in emulator computes on this CPU, in fp32
            cpu = cpu_peak("fp32")
            return Peak(cpu.flops_per_s, f"the built-in PopTorch emulator computes on the CPU: {cpu.source}")
        return Peak(ipu[0], ipu[1])
    if backend == "ipu-model":   # the IPU Model / built-in emulator compute on this CPU, in fp32
        cpu = cpu_peak("fp32")
        return Peak(cpu.flops_per_s, f"ipu-model computes on the CPU: {cpu.source}")
    if getattr(device, "type", str(device)) == "cuda":
        return cuda_peak(device, dtype_name)
    return cpu_peak(dtype_name)


def devices_in_use(cfg, world_size: int) -> int:
    """The devices MFU divides by: IPUs (replicas x IPUs per replica) on ``ipu``; else the processes
    (torchrun's world size: one GPU, or one CPU share, each)."""
    if cfg.runtime.backend == "ipu":
        from groupbert.ipu.planner import ipu_peak
        ipu = ipu_peak(cfg)
        if ipu is not None:  # the emulator runs every replica and stage on this process's CPU
            return ipu[2]
    return world_size
