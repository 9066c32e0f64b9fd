"""Held-out evaluation during training (train.eval_every): curves in metrics.csv and the log, and training
bitwise the same with or without it."""
import csv
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.multirank import ROOT

pytestmark = pytest.mark.timeout(1800)


def run(out, eval_every: int):
    args = [sys.executable, "tools/pretrain.py", "--ds_config", "ds_configs/zero2.json", "--stage", "1", "--max_steps",
            "6", "--no_eval", "--out", str(out), "--set", "data.synthetic_num=256", "data.num_workers=0",
            "train.log_every=1", f"train.eval_every={eval_every}", "train.eval_batches=2"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with (out / "stage1" / "metrics.csv").open(newline="") as f:
        return proc, list(csv.DictReader(f))


def test_heldout_curve_is_logged_and_leaves_training_bitwise_unchanged(tmp_path):
    proc, rows = run(tmp_path / "eval", eval_every=2)
    _, plain_rows = run(tmp_path / "plain", eval_every=0)
    evaluated = [r for r in rows if r.get("eval/image/mim_loss")]
    assert [r["step"] for r in evaluated] == ["2", "4", "6"], "every eval_every steps, each a metrics row"
    curve = [float(r["eval/image/mim_loss"]) for r in evaluated]
    assert curve[-1] < 0.8 * curve[0], f"the held-out MIM loss should fall while training: {curve}"
    held = [line for line in proc.stdout.splitlines() if "held-out" in line]
    assert len(held) == 3 and held[0].startswith("[momo_ds] stage 1 step 2 held-out | image/mim "), held
    assert [r["image/mim_loss"] for r in rows] == [r["image/mim_loss"] for r in plain_rows], \
        "the training losses are bitwise those of a run without it"
    a, b = (load_file(str(tmp_path / d / "stage1" / "shared_fp32.safetensors")) for d in ("eval", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
