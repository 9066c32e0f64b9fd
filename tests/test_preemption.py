"""Preemption-safe stop: SIGTERM / SIGUSR1 make every rank finish its step, checkpoint and exit 75; --resume then
ends bitwise where an uninterrupted run ends.

The 2-rank runs start one plain process per rank with the rendezvous in the environment, as SLURM's ``srun``
does (one task per rank), so the test can signal one rank and read each rank's exit code."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momo_ds.distributed import FlagVote, free_port
from momo_ds.engine.preempt import EXIT_PREEMPTED, StopSignals
from tests.multirank import ROOT

pytestmark = pytest.mark.timeout(1800)
STEPS = 10
ARGS = ["--ds_config", "ds_configs/zero2.json", "--config", "tiny", "--stage", "1", "--max_steps", str(STEPS),
        "--no_eval", "--set", "data.synthetic_num=256", "train.log_every=1", "train.warmup_steps=2",
        "data.streams.image.batch_size=16", "data.num_workers=1"]


def start_ranks(out: Path, extra=(), world: int = 2) -> list[tuple[subprocess.Popen, Path]]:
    port = str(free_port())
    procs = []
    for rank in range(world):
        log = out.parent / f"{out.name}-rank{rank}-{time.monotonic_ns()}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        with log.open("w") as f:
            procs.append((subprocess.Popen([sys.executable, "tools/pretrain.py", *ARGS, "--out", str(out), *extra],
                                           cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT), log))
    return procs


def wait_all(procs, timeout: float = 900) -> list[int]:
    return [p.wait(timeout=timeout) for p, _ in procs]


def logs(procs) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in procs)


def test_stop_signal_is_voted_one_step_late_in_one_process():
    before = signal.getsignal(signal.SIGUSR1)
    stop, vote = StopSignals(), FlagVote()
    try:
        assert not vote(stop.requested)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.received == "SIGUSR1"
        assert vote(stop.requested), "one process: the flag itself"
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGUSR1) is before, "the previous handler is back"


def test_sigterm_to_one_rank_stops_both_with_a_checkpoint_and_resume_is_bitwise(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    ref = start_ranks(straight)
    assert wait_all(ref) == [0, 0], logs(ref)

    procs = start_ranks(stopped)
    rank0_log = procs[0][1]
    deadline = time.monotonic() + 900
    while f"step 3/{STEPS}" not in rank0_log.read_text():  # mid-stage: some steps done, most to go
        assert time.monotonic() < deadline and procs[0][0].poll() is None, logs(procs)
        time.sleep(0.05)
    procs[1][0].send_signal(signal.SIGTERM)  # one rank only: the vote carries it to the other
    assert wait_all(procs) == [EXIT_PREEMPTED] * 2, logs(procs)
    text = rank0_log.read_text()
    line = next(s for s in text.splitlines() if "stopped by" in s)
    step = int(line.split("stage 1 step ")[1].split(";")[0])
    assert 3 <= step < STEPS, line
    ckpt = stopped / "stage1" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"step_{step:08d}", line
    assert {p.name for p in (ckpt / f"step_{step:08d}").glob("rank_*.json")} == {"rank_00000.json",
                                                                                 "rank_00001.json"}
    assert not (stopped / "stage1" / "DONE.json").exists()

    resumed = start_ranks(stopped, extra=["--resume"])
    assert wait_all(resumed) == [0, 0], logs(resumed)
    assert f"at step {step}" in resumed[0][1].read_text()
    for name in ("shared_fp32.safetensors", "encoder.safetensors"):
        x, y = load_file(str(straight / "stage1" / name)), load_file(str(stopped / "stage1" / name))
        assert set(x) == set(y)
        assert not [k for k in x if not torch.equal(x[k], y[k])], f"{name}: the resumed run differs"
