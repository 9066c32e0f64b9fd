"""What a scale-out user checks first, per log window: step time split into data wait / forward+backward /
optimizer step, MFU, peak memory, per-stream throughput.

Nothing here adds a host sync to a step. Data wait is host time spent in the loader (the loader is host-side, so
the host clock is exact for it). Compute phases are timed with the host clock on the CPU and with CUDA events on
GPUs (recorded every step, read on log steps only, when the trainer syncs anyway). FLOPs come from the analytic
counter (:func:`momo_ds.model.flops.training_flops`) on the host-side batch shapes.
"""
from __future__ import annotations

import resource
import time
from typing import Optional

import torch

from momo_ds.engine.cmga import StepResult, accumulate

PHASES = ("data", "fwd_bwd", "optim")


class StepClock:
    """Laps of one log window: ``lap(phase)`` ends the phase that began at the previous lap (or at the window's
    start); phases outside :data:`PHASES` (the trainer's "other": logging, checkpoints) count in the wall time
    only. ``read()`` returns the window's seconds per phase and its wall time, then starts a new window."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._reset()

    def _reset(self) -> None:
        self.start = self._last = time.perf_counter()
        self.host = dict.fromkeys(PHASES, 0.0)
        self._events: list[tuple[str, object, object]] = []
        self._event = None

    def _cuda_event(self):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.host[phase] = self.host.get(phase, 0.0) + now - self._last
        self._last = now
        if self.cuda:
            event = self._cuda_event()
            if phase in ("fwd_bwd", "optim") and self._event is not None:  # device phases: the GPU's own time
                self._events.append((phase, self._event, event))
            self._event = event

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` just spent on something else (held-out evaluation) out of the window."""
        self.start += seconds
        self._last += seconds

    def read(self) -> dict[str, float]:
        """{"wall_s", "data_s", "fwd_bwd_s", "optim_s"} of the window; a new window starts now."""
        wall = time.perf_counter() - self.start
        spent = {p: self.host[p] for p in PHASES}
        if self._events:
            self._events[-1][2].synchronize()
            for phase in ("fwd_bwd", "optim"):
                spent[phase] = sum(a.elapsed_time(b) for p, a, b in self._events if p == phase) / 1e3
        self._reset()
        return {"wall_s": wall, **{f"{p}_s": v for p, v in spent.items()}}


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(bytes, what): the peak allocated device memory on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), "device"
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0, "rss"  # Linux reports KiB


class Window:
    """One log window's running sums: loss terms (device tensors), samples / tokens per stream and FLOPs
    (host numbers)."""

    def __init__(self):
        self.running: Optional[dict[str, torch.Tensor]] = None
        self.counts: dict[str, int] = {}
        self.samples: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self.flops = 0.0
        self.steps = 0

    def add(self, result: StepResult) -> None:
        self.running = accumulate(self.running, self.counts, result)
        for name, n in result.stream_samples.items():
            self.samples[name] = self.samples.get(name, 0) + n
        for name, n in result.stream_tokens.items():
            self.tokens[name] = self.tokens.get(name, 0) + n
        self.flops += result.flops
        self.steps += 1

    @property
    def total_samples(self) -> int:
        return sum(self.samples.values())

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def rates(self, times: dict[str, float], world: int, peak: Optional[float],
              mem_max_bytes: float, data_max_s: float) -> dict[str, float]:
        """The window's telemetry columns. Throughput is over all ranks; MFU is this rank's FLOPs over its wall
        time and the device peak (every rank runs the same shapes up to text lengths); ``data_wait_pct`` is the
        largest rank's share of wall time spent waiting on its loader."""
        wall = max(times["wall_s"], 1e-9)
        row = {"samples_per_s": self.total_samples * world / wall, "tokens_per_s": self.total_tokens * world / wall}
        for name in self.samples:
            row[f"{name}/samples_per_s"] = self.samples[name] * world / wall
            row[f"{name}/tokens_per_s"] = self.tokens[name] * world / wall
        if peak:
            row["mfu"] = self.flops / wall / peak
        steps = max(self.steps, 1)
        row["step_s"] = wall / steps
        for phase in PHASES:
            row[f"time/{phase}_s"] = times[f"{phase}_s"] / steps
        row["data_wait_pct"] = 100.0 * data_max_s / wall
        row["memory_gib"] = mem_max_bytes / 2 ** 30
        return row
