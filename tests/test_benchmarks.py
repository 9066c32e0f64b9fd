"""Every benchmark runs in --quick mode and writes a JSON report with the expected keys (no timing assertions);
the analytic FLOP count the benchmarks report equals torch's FlopCounterMode count."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REPORT_KEYS = {"benchmark", "date", "quick", "machine", "versions", "config", "results"}


def run_quick(script: str, tmp_path: Path, *extra: str, timeout: int = 240) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--json", str(out),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), f"{script} wrote no JSON (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= set(report), set(report)
    assert report["benchmark"] == script and report["quick"] is True
    assert {"cpu_count", "platform", "gpu"} <= set(report["machine"])
    assert {"torch", "deepspeed", "timm", "transformers"} <= set(report["versions"])
    return report


def test_bench_encoder_quick(tmp_path):
    report = run_quick("bench_encoder", tmp_path)
    rows = report["results"]
    assert {(r["objective"], r["backend"]) for r in rows} >= {(o, b) for o in ("mim", "mlm", "cmm")
                                                             for b in ("sdpa", "math")}
    for r in rows:
        assert {"visible_s", "full_s", "time_ratio", "flop_ratio", "step_ratio_with_optimizer"} <= set(r)
        assert r["flop_ratio"] > 1.0
        if r["backend"] == "math":  # the analytic count is what FlopCounterMode sees on padded lengths
            assert r["flops_counted"]["visible"] == pytest.approx(r["flops_padded_visible"], rel=0.01)
            assert r["flops_counted"]["full"] == pytest.approx(r["flops_padded_full"], rel=0.01)


def test_bench_step_quick_two_ranks(tmp_path):
    report = run_quick("bench_step", tmp_path, "--ranks", "2")
    rows = report["results"]
    assert [r["stage"] for r in rows] == [1, 2, 3] and all(r["ranks"] == 2 for r in rows)
    for r in rows:
        assert {"samples_per_s", "visible_tokens_per_s", "flops_per_step_per_rank", "mfu", "step_s"} <= set(r)
        assert r["samples_per_s"] > 0 and r["flops_per_step_per_rank"] > 0
    assert set(rows[2]["streams"]) == {"text", "pair"}


def test_bench_memory_quick(tmp_path):
    report = run_quick("bench_memory", tmp_path)
    summary = {s["zero"]: s for s in report["results"]["summary"]}
    assert set(summary) == {0, 1, 2, 3}
    for s in summary.values():
        assert {"params", "grads", "master", "optim", "grads_plus_optimizer", "ratio_to_zero0"} <= set(s)
        assert s["params"] > 0 and s["optim"] > 0
    assert summary[2]["optim"] < summary[0]["optim"]  # partitioned Adam state
    assert "target_ratio" in summary[2]


def test_bench_peers_quick(tmp_path):
    report = run_quick("bench_peers", tmp_path)
    (row,) = report["results"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_peers import VARIANTS

    assert set(row["variants"]) == {f"momo_{a}" for a in VARIANTS} | {"flava"}
    assert all(v["samples_per_s"] > 0 for v in row["variants"].values())
    assert {"momo_total", "flava_total", "flava_trainable"} <= set(row["params"])


def test_training_flops_match_flop_counter():
    """Pair step with every objective (ITM's negatives are padded to the batch's text length, so the padded
    analytic count is exact)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from momo_ds.objectives.task import PretrainTask
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import synthetic_batch

    from momo_ds.model.flops import training_flops

    from momo_ds.config import ALIGN_INPUTS, StreamConfig
    from momo_ds.model import build_model

    torch.manual_seed(0)
    objectives = {"cmm": 1.0, "itc": 1.0, "itm": 1.0}
    # (align_inputs, stream align_mask_ratio, itm_negatives, the forward's align_inputs override)
    cases = [(align, None, 2, None) for align in ALIGN_INPUTS]
    cases += [("masked_image", 0.5, 2, None), ("masked_image", 0.5, 1, None), ("masked", None, 1, None),
              ("full", None, 1, None), ("masked_image", 0.5, 1, "full")]
    for align, ratio, negatives, override in cases:
        stream = StreamConfig(name="pair", kind="pair", objectives=objectives, batch_size=4, text_mask_ratio=0.75,
                              max_text_len=16, align_mask_ratio=ratio)
        model = build_model("tiny", depth=2, decoder_depth=1, align_inputs=align, itm_negatives=negatives)
        batch = synthetic_batch(model.cfg, stream, torch.Generator().manual_seed(0))
        assert (batch.align_keep is None) == (ratio is None)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            PretrainTask(model)(batch, objectives, align_inputs=override)["loss"].backward()
        analytic = training_flops(model.cfg, batch, objectives, True, align_inputs=override)["total"]
        assert fc.get_total_flops() == pytest.approx(analytic, rel=0.01), (align, ratio, negatives, override)


def test_check_gpu_quick_runs_the_cpu_checks(tmp_path):
    """On a CPU the fast-path checker compares the CPU flash SDPA kernel, bf16 losses and AdamW with the fp32
    reference, and names what it skips; a failing check would turn its status into "FAIL: ..."."""
    report = run_quick("check_gpu", tmp_path)
    results = report["results"]
    assert set(results) == {"sdpa_flash", "sdpa_efficient", "flash_varlen", "bf16_losses", "adamw_cpu"}
    for name in ("sdpa_flash", "bf16_losses", "adamw_cpu"):
        assert results[name]["status"] == "ok", (name, results[name])
    assert results["sdpa_efficient"]["status"].startswith("skipped")
    assert 0 < results["sdpa_flash"]["rel_diff"] < 5e-2


@pytest.mark.parametrize("script", ["prepare_wheels.sh", "run.sh"])
def test_gpu_scripts_parse(script):
    """The GPU-machine scripts cannot run in CI (no GPU, no registry there); at least they must parse."""
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu" / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_run_script_rejects_an_unknown_part(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "C"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage: run.sh A|B" in proc.stderr


def test_bench_data_quick(tmp_path):
    report = run_quick("bench_data", tmp_path)
    rows = report["results"]
    assert [r["unit"] for r in rows] == ["images/s per worker"] * 2 + ["pairs/s per worker", "texts/s per worker"]
    assert all(r["per_second"] > 0 and r["samples"] > 0 for r in rows)
    assert {"webdataset", "pillow", "tokenizers"} <= set(report["versions"])
