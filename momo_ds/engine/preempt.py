"""Preemption-safe stop: SIGTERM and SIGUSR1 make every rank finish its current step, write a checkpoint and exit
with :data:`EXIT_PREEMPTED`.

Clusters announce a kill: SLURM sends SIGTERM before SIGKILL at a time limit or preemption, and
``#SBATCH --signal=USR1@90`` asks for SIGUSR1 90 s before the end. The handler only records the signal; the
trainer asks :class:`~momo_ds.distributed.FlagVote` once per step whether any rank has one, so all ranks stop
after the same step even when only one of them was signalled (the answer comes one step late).
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"; a requeued job resumes with --resume
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by the trainer after the stop checkpoint is written."""

    def __init__(self, signame: str, stage: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signame} after stage {stage} step {step}; checkpoint {checkpoint}; "
                         f"continue with --resume")
        self.signame, self.stage, self.step, self.checkpoint = signame, stage, step, checkpoint


class StopSignals:
    """Records SIGTERM / SIGUSR1 while installed (main thread only); restores the previous handlers on close."""

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(f"[momo_ds] {self.received} received: stopping after the current step with a checkpoint",
                  flush=True)

    @property
    def requested(self) -> bool:
        return self.received is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
