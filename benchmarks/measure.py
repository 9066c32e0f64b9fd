"""How the benchmarks measure: device and dtype choice, CPU threads, synchronised interleaved timing (warm-up,
repeats, medians), device peaks (from momo_ds.engine.peak) and parameter counts."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

# the device peaks live with the trainer's MFU; re-exported for the benchmarks
from momo_ds.engine.peak import GPU_PEAK_BF16_TFLOPS, cpu_matmul_peak, device_peak, gpu_peak_tflops  # noqa: F401


# ---------------------------------------------------------------------------------------------- device, dtype
def set_threads(n: Optional[int], device: torch.device) -> None:
    """Intra-op CPU threads: ``n``, or 1 on the CPU. One thread per process times steadily on a shared machine: a
    thread pool whose workers other jobs deschedule waits at every barrier (a tiny MoMo step measured 50x slower
    with 2 threads than with 1 on a 2-core machine while another job ran). Pass ``--threads`` on a quiet one."""
    if n or device.type == "cpu":
        torch.set_num_threads(n or 1)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """bf16 on GPUs that have it, fp32 on the CPU (where bf16 matmuls are emulated), unless ``name`` forces one."""
    if name != "auto":
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds of each timed repeat."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.times), "max_s": max(self.times), "times_s": self.times}


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int = 1,
                     repeats: int = 3) -> dict[str, Timing]:
    """Time variants side by side: every repeat runs each variant once (order rotated), so machine noise hits all
    of them alike; read medians. Each call is synchronised on the device before the clock stops."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
        sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: Timing(t) for n, t in times.items()}


# ----------------------------------------------------------------------------------------------------- sizes
def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
