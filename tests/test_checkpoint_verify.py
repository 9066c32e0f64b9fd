"""A damaged checkpoint never costs the run: the manifest, the fall-back to the newest complete tag, and one line
for a save that cannot be written (one process; the engine is a stand-in that writes files as DeepSpeed does)."""
import errno
import json
import shutil
from pathlib import Path

import pytest

from momo_ds.engine import checkpoint as ckpt


class FileEngine:
    """Writes a model-states file of ``size`` bytes per tag, then raises ``fail`` if given."""

    def __init__(self, size: int = 4096, fail: Exception | None = None):
        self.size, self.fail = size, fail

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        d = Path(save_dir) / tag
        d.mkdir(parents=True, exist_ok=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(b"\0" * self.size)
        if self.fail is not None:
            raise self.fail


def saved(tmp_path: Path, steps=(2, 4)) -> Path:
    d = tmp_path / "checkpoints"
    for step in steps:
        ckpt.save(FileEngine(), d, step, {"step": step}, {"loader": {}, "rng": {}}, keep_last=3)
    return d


def resume(d: Path) -> tuple[str, list[str]]:
    lines: list[str] = []
    return ckpt.resume_tag(d, say=lines.append), lines


def test_manifest_lists_every_file_with_its_size(tmp_path):
    d = saved(tmp_path, steps=(2,))
    manifest = json.loads((d / "step_00000002" / ckpt.MANIFEST).read_text())
    assert manifest == {"tag": "step_00000002", "files": {"mp_rank_00_model_states.pt": 4096,
                                                          "rank_00000.json": len(json.dumps({"loader": {},
                                                                                             "rng": {}}))}}
    assert resume(d) == ("step_00000002", [])


def test_truncated_newest_falls_back_with_one_line_naming_the_file(tmp_path):
    d = saved(tmp_path)
    shard = d / "step_00000004" / "mp_rank_00_model_states.pt"
    shard.write_bytes(b"\0" * 100)
    tag, lines = resume(d)
    assert tag == "step_00000002"
    assert len(lines) == 1 and str(shard) in lines[0] and "truncated" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize("damage", ["dir_gone", "no_manifest", "rank_state_gone"])
def test_other_damage_falls_back_too(tmp_path, damage):
    d = saved(tmp_path)
    newest = d / "step_00000004"
    if damage == "dir_gone":
        shutil.rmtree(newest)  # `latest` still names it
    elif damage == "no_manifest":
        (newest / ckpt.MANIFEST).unlink()
    else:
        (newest / "rank_00000.json").unlink()
    tag, lines = resume(d)
    assert tag == "step_00000002" and len(lines) == 1
    assert {"dir_gone": "directory is gone", "no_manifest": "no manifest",
            "rank_state_gone": "rank_00000.json is missing"}[damage] in lines[0]


def test_no_checkpoint_is_a_fresh_start_and_none_complete_is_an_error(tmp_path):
    assert ckpt.resume_tag(tmp_path / "nothing") is None
    d = saved(tmp_path)
    for tag in ("step_00000002", "step_00000004"):
        (d / tag / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        resume(d)


def test_full_disk_is_one_line_naming_the_path_and_what_remains(tmp_path):
    d = saved(tmp_path, steps=(2,))
    engine = FileEngine(fail=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save(engine, d, 4, {"step": 4}, {}, keep_last=2)
    msg = str(e.value)
    assert msg == (f"could not write checkpoint {d / 'step_00000004'}: no space left on the device holding {d}; "
                   f"the newest complete checkpoint is {d / 'step_00000002'}")
    assert not list(d.glob(".tmp-*")), "the partial save is removed (it holds space)"
    assert (d / "latest").read_text() == "step_00000002" and resume(d) == ("step_00000002", [])


def test_torch_stream_error_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    d = saved(tmp_path, steps=(2,))
    real = shutil.disk_usage
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(ckpt.CheckpointError, match="no space left on the device"):
        ckpt.save(FileEngine(fail=RuntimeError("basic_ios::clear: iostream error")), d, 4, {}, {}, keep_last=2)


def test_other_write_errors_keep_their_message(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"PermissionError: .*denied; no checkpoint remains"):
        ckpt.save(FileEngine(fail=PermissionError("denied")), tmp_path / "c", 2, {}, {}, keep_last=2)


@pytest.mark.timeout(1800)
def test_real_run_resumes_from_the_previous_checkpoint_when_the_newest_is_truncated(tmp_path):
    import subprocess
    import sys

    from tests.multirank import ROOT

    out = tmp_path / "run"
    args = [sys.executable, "tools/pretrain.py", "--ds_config", "ds_configs/zero2.json", "--stage", "1",
            "--max_steps", "6", "--save_every", "2", "--no_eval", "--out", str(out), "--set",
            "data.synthetic_num=256", "data.streams.image.batch_size=16", "data.num_workers=0"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(args, cwd=ROOT, env={**env, "MOMO_FAULT_AT_STEP": "4"}, capture_output=True,
                            text=True, timeout=900)
    d = out / "stage1" / "checkpoints"
    assert (d / "latest").read_text() == "step_00000004", killed.stdout[-2000:] + killed.stderr[-2000:]
    shard = next((d / "step_00000004").rglob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:1000])
    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    lines = [line for line in resumed.stdout.splitlines() if "unusable" in line]
    assert len(lines) == 1 and str(shard) in lines[0] and "truncated" in lines[0], resumed.stdout[-2000:]
    assert f"resumed stage 1 from {d / 'step_00000002'} at step 2" in resumed.stdout
    assert (out / "stage1" / "DONE.json").is_file()
