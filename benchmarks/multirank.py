"""Multi-rank benchmarks: the torchrun relaunch that runs a script on N local ranks, the process group, and each
rank's device."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from checkout import ROOT  # first: puts the checkout on sys.path for momo_ds

import torch

from momo_ds import distributed as mdist


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_ranks(nproc: int) -> None:
    """One rank per GPU (NCCL refuses two ranks on one GPU); CPU ranks are unlimited."""
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise SystemExit(f"--ranks {nproc} needs {nproc} GPUs, this machine has {torch.cuda.device_count()}; use "
                         f"--ranks {torch.cuda.device_count()} or CUDA_VISIBLE_DEVICES= to run the ranks on the CPU")


def relaunch_under_torchrun(script: str, argv: list[str], nproc: int, json_path: str) -> int:
    """Run ``script argv`` on ``nproc`` local ranks with torchrun and wait; rank 0 writes ``json_path``.

    Judged by the JSON rank 0 wrote, not by the exit code alone (DeepSpeed on CPU sometimes crashes at interpreter
    exit after finishing). CPU ranks split the cores between them unless OMP_NUM_THREADS is set.
    """
    check_ranks(nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={mdist.free_port()}", script, *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    start = time.time()
    rc = subprocess.run(cmd, env=env).returncode
    written = Path(json_path).is_file() and Path(json_path).stat().st_mtime >= start
    if written:
        return 0
    print(f"rank 0 did not write {json_path} (torchrun exit code {rc})", file=sys.stderr)
    return rc or 1


def relaunch_script(script: str, argv: Optional[list[str]], json_arg: Optional[str], nproc: int) -> int:
    """Run ``script`` again with this run's arguments (``argv``, else the command line) on ``nproc`` ranks. Without
    ``--json`` rank 0 writes into a temporary directory: the JSON is how the relaunch tells that the ranks finished."""
    json_path = json_arg or str(Path(tempfile.mkdtemp()) / f"{Path(script).stem}.json")
    child = list(argv if argv is not None else sys.argv[1:]) + ([] if json_arg else ["--json", json_path])
    return relaunch_under_torchrun(str(Path(script).resolve()), child, nproc, json_path)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size): the trainer's torch.distributed start-up, also for a plain single process."""
    from momo_ds import distributed as mdist

    mdist.init_distributed("nccl" if device.type == "cuda" else "gloo")
    return mdist.get_rank(), mdist.get_world_size()
