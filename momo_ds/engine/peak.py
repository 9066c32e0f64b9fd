"""The device's peak FLOP/s, the denominator of MFU (model FLOPs utilisation) in the trainer and the benchmarks.

GPUs: dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts; the PCIe H100 is listed separately and
matched first). CPUs have no data-sheet number that matmuls reach, so the peak is measured: the best of a few
n x n matmuls in the training dtype with the current thread count.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

GPU_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0, "A100": 312.0}


def cpu_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul on this CPU with the current thread count (best of ``repeats``: a peak,
    and the least disturbed by other jobs)."""
    g = torch.Generator().manual_seed(0)  # its own RNG: the trainer measures this mid-run, after a resume too
    a, b = torch.randn(n, n, dtype=dtype, generator=g), torch.randn(n, n, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times)


def gpu_peak_tflops(name: str) -> Optional[float]:
    for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
        if all(part in name for part in key.split()):
            return tflops
    return None


def device_peak(device: torch.device, dtype: torch.dtype, quick: bool = False) -> tuple[Optional[float], str]:
    """(peak FLOP/s, where it comes from): the table for known GPUs in bf16, a measured matmul on the CPU; None
    for a GPU the table does not know (MFU is then left out, not guessed)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = gpu_peak_tflops(name)
        if tflops is None:
            return None, f"{name}: no peak in the table"
        note = "" if dtype == torch.bfloat16 else f" (the bf16 peak; this run is {dtype})"
        return tflops * 1e12, f"{name} dense bf16 {tflops:.0f} TFLOP/s{note}"
    flops = cpu_matmul_peak(dtype, n=1024 if quick else 2048)
    return flops, f"measured {str(dtype).replace('torch.', '')} matmul, {torch.get_num_threads()} threads"
