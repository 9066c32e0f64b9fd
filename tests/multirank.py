"""Launch helpers for 2-rank CPU tests. Ranks report through files; a launch is judged by what the ranks wrote
(DeepSpeed on CPU occasionally crashes at interpreter exit after finishing), never by the exit code alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from momo_ds.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]


def launch(script: str, args: list[str], nproc: int = 2, timeout: int = 600, env: dict | None = None,
           log: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun with ``nproc`` CPU ranks; returns the completed process (output captured)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", script, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (proc.stdout + proc.stderr)[-n:]
