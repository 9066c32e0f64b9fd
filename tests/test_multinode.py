"""Multi-node on one machine: 2 nodes x 1 rank on localhost, through torchrun (--nnodes 2 --node_rank 0|1) and
through the deepspeed launcher without ssh (--no_ssh --node_rank 0|1, a two-host hostfile). Both "nodes" rename
their own checkpoint files (local rank 0 of each node) into one shared output directory, as nodes on a shared
file system do. A run killed after its checkpoint and resumed ends bitwise where the uninterrupted run ends."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momo_ds.distributed import free_port
from momo_ds.engine.checkpoint import MANIFEST, check_tag
from tests.multirank import ROOT

pytestmark = pytest.mark.timeout(2400)
ARGS = ["--ds_config", "ds_configs/zero2.json", "--config", "tiny", "--stage", "1", "--max_steps", "4",
        "--save_every", "2", "--no_eval", "--set", "data.synthetic_num=256", "data.streams.image.batch_size=16",
        "data.num_workers=1", "train.log_every=1", "train.eval_every=0"]


def torchrun_node(node: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
            "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "tools/pretrain.py"]


def deepspeed_node(node: int, port: int, hostfile: Path) -> list[str]:
    launcher = Path(sys.executable).with_name("deepspeed")
    return [str(launcher) if launcher.exists() else "deepspeed", f"--hostfile={hostfile}", "--no_ssh",
            f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", "tools/pretrain.py"]


def two_nodes(launch, out: Path, extra=(), env=None, timeout=900) -> list[subprocess.CompletedProcess]:
    port = free_port()
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    procs = [subprocess.Popen([*launch(node, port), *ARGS, "--out", str(out), *extra], cwd=ROOT, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    return [(p.communicate(timeout=timeout)[0], p.returncode) for p in procs]


def assert_complete(out: Path, tag: str) -> None:
    d = out / "stage1" / "checkpoints"
    assert (d / "latest").read_text().strip() == tag
    assert check_tag(d, tag) is None and (d / tag / MANIFEST).is_file()
    assert {p.name for p in (d / tag).glob("rank_*.json")} == {"rank_00000.json", "rank_00001.json"}
    assert not list(d.glob(".tmp-*")), "every node's temporary directory was renamed or removed"


def test_two_nodes_torchrun_and_deepspeed_launcher_checkpoint_and_resume(tmp_path):
    straight, resumed = tmp_path / "torchrun", tmp_path / "deepspeed"
    runs = two_nodes(torchrun_node, straight)
    assert (straight / "stage1" / "DONE.json").is_file(), runs[0][0][-3000:] + runs[1][0][-3000:]
    assert_complete(straight, "step_00000004")

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    ds = lambda node, port: deepspeed_node(node, port, hostfile)  # noqa: E731
    killed = two_nodes(ds, resumed, env={"MOMO_FAULT_AT_STEP": "2"})
    assert not (resumed / "stage1" / "DONE.json").exists(), killed[0][0][-3000:]
    assert_complete(resumed, "step_00000002")
    again = two_nodes(ds, resumed, extra=["--resume"])
    assert (resumed / "stage1" / "DONE.json").is_file(), again[0][0][-3000:] + again[1][0][-3000:]
    assert "resumed stage 1" in again[0][0] and "at step 2" in again[0][0]
    assert_complete(resumed, "step_00000004")
    for name in ("shared_fp32.safetensors", "encoder.safetensors"):
        x, y = load_file(str(straight / "stage1" / name)), load_file(str(resumed / "stage1" / name))
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x), f"{name} differs"
