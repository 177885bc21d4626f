"""Peak FLOP/s that bound what a model can reach, per dtype: the theoretical peak read from the machine
(CPU) or the datasheet (GPU), and a measured matmul beside it, labelled as measured.

CPU: cores x FMA lanes per instruction x 2 FLOP per FMA x FMA pipes x clock.
  lanes: 16 fp32 with AVX-512, 8 with AVX2/FMA, 4 with SSE; bf16 doubles them where the CPU has
  AVX512_BF16 (VDPBF16PS: two bf16 products per fp32 lane); AMX-BF16 gives 1024 bf16 MACs per cycle per core.
  pipes: 2, an upper bound: server cores have at most two FMA pipes of their widest vector (Zen 4 runs
  512-bit instructions on 256-bit pipes, so its real peak is half of this bound).
  clock: the largest frequency the machine reports (cpufreq's maximum, else /proc/cpuinfo's MHz).
GPU: the datasheet's dense peak for the device's name (a table below); unknown devices have none.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

FMA_PIPES = 2
# dense TFLOP/s from NVIDIA's datasheets (SXM unless the name says PCIe/NVL)
GPU_DATASHEET_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0},
    "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_clock_hz() -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
        return max(mhz) * 1e6 if mhz else None
    except (OSError, ValueError):
        return None


def cpu_theoretical() -> dict:
    """=> {"fp32": FLOP/s, "bf16": FLOP/s, "how": ...} for the cores this process may use."""
    flags, clock = _cpu_flags(), _cpu_clock_hz()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lanes = 16 if "avx512f" in flags else 8 if ("avx2" in flags or "fma" in flags) else 4
    if clock is None:
        return {"fp32": None, "bf16": None, "how": "clock not readable"}
    fp32 = cores * lanes * 2 * FMA_PIPES * clock
    bf16 = cores * 1024 * 2 * clock if "amx_bf16" in flags else (2 * fp32 if "avx512_bf16" in flags else fp32)
    isa = "AVX-512" if lanes == 16 else "AVX2/FMA" if lanes == 8 else "SSE"
    return {"fp32": fp32, "bf16": bf16,
            "how": f"{cores} cores x {lanes} fp32 lanes ({isa}) x 2 x {FMA_PIPES} FMA pipes x {clock / 1e9:.2f} GHz"
                   f"{'; bf16 x2 (AVX512_BF16)' if 'avx512_bf16' in flags and 'amx_bf16' not in flags else ''}"
                   f"{'; bf16 on AMX' if 'amx_bf16' in flags else ''}"}


def gpu_datasheet(name: str) -> dict:
    for key, peaks in GPU_DATASHEET_TFLOPS.items():  # the more specific names come first
        if key in name:
            return {k: v * 1e12 for k, v in peaks.items()} | {"how": f"NVIDIA datasheet, {key} (dense)"}
    return {"fp32": None, "bf16": None, "how": f"no datasheet entry for {name}"}


# memory bandwidth, TB/s, from the same datasheets
GPU_DATASHEET_TBPS = {"H200": 4.8, "H100 PCIe": 2.0, "H100 NVL": 3.9, "H100": 3.35, "A100": 2.0}


def bandwidth(device: str) -> dict:
    """=> {"bytes_per_s": the datasheet's memory bandwidth or None, "how": ...} (CPU: None)."""
    if device != "cuda":
        return {"bytes_per_s": None, "how": "no bandwidth bound for the CPU"}
    name = torch.cuda.get_device_name()
    for key, tbps in GPU_DATASHEET_TBPS.items():
        if key in name:
            return {"bytes_per_s": tbps * 1e12, "how": f"NVIDIA datasheet, {key}"}
    return {"bytes_per_s": None, "how": f"no datasheet entry for {name}"}


def theoretical(device: str) -> dict:
    return gpu_datasheet(torch.cuda.get_device_name()) if device == "cuda" else cpu_theoretical()


def at_least_measured(peaks: dict, precision: str, measured: float) -> dict:
    """The bound, never under what was measured: a virtual machine reports its nominal clock (no cpufreq), and
    cores boost above it, so a matmul can run faster than the clock-based figure. Then every precision's
    figure is scaled by measured / bound, and `how` says so."""
    bound = peaks.get(precision)
    if bound is None or measured <= bound:
        return peaks
    k = measured / bound  # bound * k can round an ulp under `measured`: the precision measured gets it exactly
    return {**{key: measured if key == precision else v * k for key, v in peaks.items()
               if key != "how" and v is not None},
            "how": f"{peaks['how']}; x{k:.2f}: the measured fp32 matmul ran above this clock-based figure (the "
                   f"cores run faster than the clock the machine reports), so the measurement sets the bound"}


def measured_matmul(device: str = "cpu", n: int = 1024) -> float:
    """Best of 5 x 4 fp32 n x n torch.mm: what this device does in practice, for reference (not a bound)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best
