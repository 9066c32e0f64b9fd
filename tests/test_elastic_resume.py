"""Elastic resume end to end: a stage checkpointed by 2 ranks finishes on 1, and one checkpointed by 1 finishes on
2, without manual steps (universal conversion by the trainer, the data position remapped; the data guarantee
itself is counted sample by sample in tests/test_data_elastic.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from momo_ds.engine.checkpoint import check_tag
from tests.multirank import ROOT, launch, tail

pytestmark = pytest.mark.timeout(2400)
ARGS = ["tools/pretrain.py", "--ds_config", "ds_configs/zero2.json", "--config", "tiny", "--stage", "3",
        "--max_steps", "4", "--save_every", "2", "--no_eval", "--set", "data.synthetic_num=256",
        "train.init_from=", "data.num_workers=1", "train.log_every=1", "train.eval_every=0"]


def one_rank(out: Path, extra=(), env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *ARGS, "--out", str(out), *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def two_ranks(out: Path, extra=(), env=None) -> subprocess.CompletedProcess:
    return launch(ARGS[0], [*ARGS[1:], "--out", str(out), *extra], env=env)


@pytest.mark.parametrize("first,then", [(two_ranks, one_rank), (one_rank, two_ranks)], ids=["2to1", "1to2"])
def test_stage_checkpointed_on_one_world_size_finishes_on_another(tmp_path, first, then):
    out = tmp_path / "run"
    killed = first(out, env={"MOMO_FAULT_AT_STEP": "2"})
    ckpt = out / "stage3" / "checkpoints"
    assert check_tag(ckpt, "step_00000002") is None, tail(killed)
    resumed = then(out, extra=["--resume"])
    assert (out / "stage3" / "DONE.json").is_file(), tail(resumed)
    saved, now = (2, 1) if first is two_ranks else (1, 2)
    assert f"at step 2 (written by {saved} ranks, now {now}: elastic)" in resumed.stdout, tail(resumed)
    assert (ckpt / "step_00000002_universal").is_dir(), "the trainer converted it"
    assert check_tag(ckpt, "step_00000004") is None
    assert len(list((ckpt / "step_00000004").glob("rank_*.json"))) == now
    rows = (out / "stage3" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"], "steps 3-4 logged after the resume"
