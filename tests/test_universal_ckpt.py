"""Elastic resume through DeepSpeed's universal checkpoint (momo_ds.engine.universal), ZeRO-1, -2 and -3 in fp32
on CPU: the tiny MoMo engine of the trainer trained 2 steps and saved on 2 ranks resumes on 1, and one trained
on 1 rank resumes on 2 (tests/workers/universal_worker.py).

Resumed state equals the saved state bitwise: fp32 master weights, Adam exp_avg / exp_avg_sq per parameter name,
Adam step, param groups (weight decay per group), LR scheduler, engine step, client state.

The step after the resume is compared with the step the original world size took from the same state. The
global batch is cut into equal rank slices whose losses average to the full-batch loss, so the two steps differ
only in summation order (the gradient all-reduce, the grad-norm sum): measured below 1e-7 on parameters the
update moves by ~1e-3, so 1e-6 (0.1% of the update) is the tolerance, and 1e-6 relative on the gradient norm.
The attention key biases (the middle third of every ``attn.qkv.bias``) are the exception: softmax ignores them,
so their true gradient is 0 and what they get is float noise (~1e-9), which Adam divides by its own running
size: an update of up to ~lr of either sign whatever the summation order (measured 2e-5). They are held to
|difference| <= lr only.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momo_ds.engine import universal
from tests.multirank import ROOT, launch, tail
from tests.workers.universal_worker import CLIENT, STEPS

WORKER = "tests/workers/universal_worker.py"
ZEROS = (1, 2, 3)
TAG = f"step_{STEPS:08d}"
STEP_ATOL = 1e-6
NORM_RTOL = 1e-6


def run_single(args: list[str], log: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The worker as a plain process (a world of one, no torchrun)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, WORKER, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def _pipeline(out: Path, src: int) -> dict:
    """Train + save on ``src`` ranks (1 or 2), then resume those checkpoints on the other world size (every
    ZeRO stage in one process per world size)."""
    def run(args: list[str], world: int, log: Path):
        return launch(WORKER, args, nproc=2, log=log) if world == 2 else run_single(args, log)

    zeros = ",".join(map(str, ZEROS))
    procs, walls = {}, {}
    for name, args, world in (("train", [str(out), zeros, "train"], src),
                              ("resume", [str(out), zeros, f"resume:{src}"], 3 - src)):
        t0 = time.perf_counter()
        procs[name] = run(args, world, out / f"{name}.log")
        walls[name] = round(time.perf_counter() - t0, 1)
    (out / "walls.json").write_text(json.dumps(walls))
    return procs


@pytest.fixture(scope="module")
def from_w2(tmp_path_factory):
    """2 ranks train and save; 1 rank (a plain process) resumes."""
    out = tmp_path_factory.mktemp("universal_from_w2")
    return out, _pipeline(out, 2)


@pytest.fixture(scope="module")
def from_w1(tmp_path_factory):
    """1 rank trains and saves; 2 ranks resume (rank 0 converts, rank 1 waits)."""
    out = tmp_path_factory.mktemp("universal_from_w1")
    return out, _pipeline(out, 1)


def _status(out: Path, procs, label: str, ranks) -> None:
    for r in ranks:
        f = out / f"{label}_rank{r}.json"
        logs = "\n".join(tail(p, 1500) for p in procs.values())
        assert f.is_file(), f"{label}: rank {r} did not report:\n{logs}"
        status = json.loads(f.read_text())
        assert status["ok"], f"{label} rank {r}: {status['error']}\n{status['trace']}"


def _key_bias_mask(name: str, t: torch.Tensor) -> torch.Tensor:
    """True on the attention key-bias entries (qkv.bias is [q; k; v])."""
    mask = torch.zeros_like(t, dtype=torch.bool)
    if name.endswith("attn.qkv.bias"):
        n = t.numel() // 3
        mask[n:2 * n] = True
    return mask


@pytest.mark.timeout(900)
@pytest.mark.parametrize("src,dst", [(2, 1), (1, 2)])
@pytest.mark.parametrize("zero", ZEROS)
def test_elastic_resume(request, zero, src, dst):
    out, procs = request.getfixturevalue(f"from_w{src}")
    _status(out, procs, f"train_z{zero}_w{src}", range(src))
    _status(out, procs, f"resume{src}_z{zero}_w{dst}", range(dst))
    name = f"z{zero}_w{dst}_from{src}"

    # the resumed state is the saved state, bit for bit
    saved = load_file(str(out / f"z{zero}_w{src}_saved.safetensors"))
    loaded = load_file(str(out / f"{name}_loaded.safetensors"))
    assert set(loaded) == set(saved) and len(saved) == 3 * len({k.split("/", 1)[1] for k in saved})
    differ = [k for k in saved if not torch.equal(saved[k], loaded[k])]
    assert not differ, f"ZeRO-{zero} {src}->{dst}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    meta_saved = json.loads((out / f"z{zero}_w{src}_saved.json").read_text())
    meta_loaded = json.loads((out / f"{name}_loaded.json").read_text())
    for key in ("scheduler", "groups", "adam_steps", "global_steps", "lr"):
        assert meta_loaded[key] == meta_saved[key], (key, meta_loaded[key], meta_saved[key])
    assert [g["weight_decay"] for g in meta_loaded["groups"]] == [0.05, 0.0]
    assert meta_saved["scheduler"]["last_epoch"] == STEPS and meta_saved["adam_steps"] == [float(STEPS)]
    info = json.loads((out / f"{name}_client.json").read_text())
    assert info["client"] == {"step": STEPS, **CLIENT}
    assert info["saved_world_size"] == src and info["reused_tag"] == universal.universal_tag(TAG)
    assert info["module_follows_fp32"]

    # one more step equals the original world size's step from the same state, up to summation order
    ref = json.loads((out / f"z{zero}_w{src}_ref.json").read_text())
    after = json.loads((out / f"{name}_after.json").read_text())
    for key in ("scheduler", "groups", "adam_steps", "global_steps", "lr"):
        assert after[key] == ref[key], (key, after[key], ref[key])
    assert abs(after["grad_norm"] - ref["grad_norm"]) <= NORM_RTOL * ref["grad_norm"]
    ref_p = load_file(str(out / f"z{zero}_w{src}_ref.safetensors"))
    after_p = load_file(str(out / f"{name}_after.safetensors"))
    assert set(ref_p) == set(after_p)
    lr = ref["lr"][0]
    worst, worst_key_bias, moved = 0.0, 0.0, 0.0
    for k, r in ref_p.items():
        d = (after_p[k] - r).abs()
        kb = _key_bias_mask(k, d)
        worst = max(worst, float(d[~kb].max()) if (~kb).any() else 0.0)
        worst_key_bias = max(worst_key_bias, float(d[kb].max()) if kb.any() else 0.0)
        moved = max(moved, float((r - saved[k]).abs().max()))
    assert worst <= STEP_ATOL, f"ZeRO-{zero} {src}->{dst}: max |resumed step - reference| = {worst:.3g}"
    assert worst_key_bias <= lr, f"ZeRO-{zero} {src}->{dst}: attention key bias off by {worst_key_bias:.3g}"
    assert moved > 0.5 * lr  # the step is real: the comparison is not between unchanged weights


# ------------------------------------------------------------------------------ single process: files and errors
def _copy_tag(run, tmp_path: Path, zero: int = 2, world: int = 2) -> Path:
    """A copy of one saved tag (no universal copy) in a fresh checkpoint folder."""
    import shutil

    out, procs = run
    _status(out, procs, f"train_z{zero}_w{world}", range(world))
    dst = tmp_path / "checkpoints"
    dst.mkdir()
    shutil.copytree(out / f"z{zero}_w{world}" / TAG, dst / TAG)
    return dst


@pytest.mark.timeout(900)
def test_saved_world_size(from_w2, from_w1, tmp_path):
    for world, (out, _) in ((2, from_w2), (1, from_w1)):
        for zero in ZEROS:
            assert universal.saved_world_size(out / f"z{zero}_w{world}", TAG) == world
    ckpt_dir = _copy_tag(from_w2, tmp_path)
    with pytest.raises(RuntimeError, match="does not exist") as e:
        universal.saved_world_size(ckpt_dir, "step_00000099")
    assert "\n" not in str(e.value)
    (ckpt_dir / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").rename(ckpt_dir / TAG / "moved.bin")
    with pytest.raises(RuntimeError, match="inconsistent"):  # 1 shard left, model states say 2
        universal.saved_world_size(ckpt_dir, TAG)
    (ckpt_dir / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt").rename(
        ckpt_dir / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with pytest.raises(RuntimeError, match=r"incomplete: .*ranks \[1\], expected 0..0"):
        universal.saved_world_size(ckpt_dir, TAG)


@pytest.mark.timeout(900)
def test_conversion_is_atomic_reused_and_refreshed(from_w2, tmp_path):
    ckpt_dir = _copy_tag(from_w2, tmp_path)
    utag = universal.to_universal(ckpt_dir, TAG)
    out = ckpt_dir / utag
    assert utag == f"{TAG}_universal" and universal.is_converted(ckpt_dir, TAG)
    marker = json.loads((out / universal.MARKER).read_text())
    assert marker["source"] == TAG and marker["saved_world_size"] == 2
    assert (out / "zero" / "optimizer_state.pt").is_file() and (out / "mp_rank_00_model_states.pt").is_file()
    assert (out / "zero" / "model.encoder.blocks.0.attn.qkv.weight" / "exp_avg_sq.pt").is_file()
    leftovers = sorted(p.name for p in ckpt_dir.iterdir())
    assert leftovers == [TAG, utag], leftovers  # no temporary folder, no latest_universal beside the tags
    stamp = (out / universal.MARKER).stat().st_mtime_ns
    universal.to_universal(ckpt_dir, TAG)  # complete and current: reused
    assert (out / universal.MARKER).stat().st_mtime_ns == stamp
    # the tag saved again (new files): the copy is outdated and converted again, here by the subprocess path
    shard = ckpt_dir / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000_000))
    assert not universal.is_converted(ckpt_dir, TAG)
    universal.to_universal(ckpt_dir, TAG, workers=2)
    assert universal.is_converted(ckpt_dir, TAG) and (out / universal.MARKER).stat().st_mtime_ns != stamp


@pytest.mark.timeout(900)
def test_conversion_errors_are_one_line_and_leave_nothing(from_w2, tmp_path):
    ckpt_dir = _copy_tag(from_w2, tmp_path)
    with pytest.raises(RuntimeError, match="does not exist"):
        universal.to_universal(ckpt_dir, "step_00000099")
    shard = ckpt_dir / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated by a full disk
    for workers in (1, 2):
        with pytest.raises(RuntimeError) as e:
            universal.to_universal(ckpt_dir, TAG, workers=workers)
        msg = str(e.value)
        assert "\n" not in msg and str(ckpt_dir / TAG) in msg and "universal" in msg, msg
        assert sorted(p.name for p in ckpt_dir.iterdir() if not p.name.endswith(".log")) == [TAG]


def test_universal_ds_config_and_the_flag_it_needs():
    cfg = {"zero_optimization": {"stage": 2}, "checkpoint": {"tag_validation": "Warn"}}
    got = universal.universal_ds_config(cfg)
    assert got["checkpoint"] == {"tag_validation": "Warn", "load_universal": True}
    assert cfg["checkpoint"] == {"tag_validation": "Warn"}  # a copy

    class PlainEngine:  # built without the flag
        def load_universal_checkpoint(self):
            return False

    with pytest.raises(RuntimeError, match="universal_ds_config"):
        universal.load_universal(PlainEngine(), Path("nowhere"), TAG)
