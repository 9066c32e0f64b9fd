"""Checkpoints: atomic DeepSpeed saves with per-rank data/RNG state, exact resume, export, stage initialisation.

Layout of ``<stage_dir>/checkpoints``::

    step_00000040/            one DeepSpeed tag (model + optimizer shards, scheduler, client_state)
        rank_00000.json       this rank's data-loader position and RNG states
        MANIFEST.json         every file of the tag on this node and its size, written last
    latest                    the newest complete tag (written last, atomically)

A save goes to ``.tmp-step_…`` first and is renamed when every rank has finished, so a run killed mid-save
leaves the previous checkpoint as ``latest``. A resume trusts no name: it takes the newest tag whose manifest
matches the files on every rank (``latest`` first), says in one line what was wrong with any newer one, and
falls back. A save that fails (a full disk, a write error) ends the run with one line naming the path and the
checkpoint that remains. Nothing here unpickles files it did not write.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from momo_ds import distributed as mdist

LATEST = "latest"
TAG = re.compile(r"step_\d{8}")
MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none can be resumed from: the message is the one line to print."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------- RNG state
def _tensor_to_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _b64_to_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + accelerator) RNG states as JSON-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _tensor_to_b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = _tensor_to_b64(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(_b64_to_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_b64_to_tensor(state["cuda"]))


# ------------------------------------------------------------------------------------------------- save / resume
def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], rank_state: dict[str, Any],
         keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory; CheckpointError (on every rank)
    when any rank could not write its part, after removing the partial save."""
    ckpt_dir = Path(ckpt_dir)
    tag, tmp_tag = tag_for(step), f".tmp-{tag_for(step)}"
    rank = mdist.get_rank()
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    mdist.barrier()
    error = None
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
        (ckpt_dir / tmp_tag).mkdir(parents=True, exist_ok=True)
        atomic_write_text(ckpt_dir / tmp_tag / f"rank_{rank:05d}.json", json.dumps(rank_state))
    except Exception as e:  # a full disk shows up as OSError(ENOSPC) or as torch's "basic_ios::clear" error
        error = _write_error(ckpt_dir / tmp_tag, e)
    if mdist.any_rank(error is not None):
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
        remains = latest_tag(ckpt_dir)
        where = f"the newest complete checkpoint is {ckpt_dir / remains}" if remains else "no checkpoint remains"
        raise CheckpointError(f"could not write checkpoint {ckpt_dir / tag}: {error or 'another rank failed'}; "
                              f"{where}")
    if mdist.get_local_rank() == 0 and (ckpt_dir / tmp_tag).exists():  # each node's files (shared FS: first wins)
        try:
            write_manifest(ckpt_dir / tmp_tag, tag)
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            os.replace(ckpt_dir / tmp_tag, ckpt_dir / tag)
        except FileNotFoundError:
            pass
    mdist.barrier()
    if rank == 0:
        atomic_write_text(ckpt_dir / LATEST, tag)
        for old in step_tags(ckpt_dir)[:-max(1, keep_last)]:
            for path in (ckpt_dir / old, *ckpt_dir.glob(f"{old}_*")):  # and its converted copies (elastic resume)
                shutil.rmtree(path, ignore_errors=True)
    mdist.barrier()
    return ckpt_dir / tag


def _write_error(path: Path, e: Exception) -> str:
    """One line for a failed write: ENOSPC named as a full disk (also when torch's C++ stream hides the errno)."""
    full = isinstance(e, OSError) and e.errno == errno.ENOSPC
    if not full:
        try:
            full = shutil.disk_usage(path.parent).free < 64 * 2 ** 20
        except OSError:
            pass
    if full:
        return f"no space left on the device holding {path.parent}"
    return " ".join(f"{type(e).__name__}: {e}".split())


def write_manifest(tag_dir: Path, tag: str) -> None:
    """Every file under ``tag_dir`` with its size, written last (atomically): a tag without it, or whose files
    do not match it, is incomplete."""
    files = {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    atomic_write_text(tag_dir / MANIFEST, json.dumps({"tag": tag, "files": files}, indent=1))


def check_tag(ckpt_dir: Path, tag: str) -> Optional[str]:
    """None if ``tag`` is complete on this node (its manifest matches the files and holds this rank's state),
    else what is wrong, in a few words."""
    tag_dir = Path(ckpt_dir) / tag
    if not tag_dir.is_dir():
        return "its directory is gone"
    try:
        manifest = json.loads((tag_dir / MANIFEST).read_text())
        files = dict(manifest["files"])
    except FileNotFoundError:
        return "it has no manifest (an incomplete save)"
    except (ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for name, size in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {size} (truncated)"
    return None


def step_tags(ckpt_dir: Path) -> list[str]:
    """The checkpoint tags (``step_XXXXXXXX`` directories) in ``ckpt_dir``, oldest first."""
    return sorted(p.name for p in Path(ckpt_dir).glob("step_*") if p.is_dir() and TAG.fullmatch(p.name))


def latest_tag(ckpt_dir: Path) -> Optional[str]:
    """The newest tag complete on this node (no collective): what a failed save leaves to resume from."""
    return next((t for t in resume_candidates(ckpt_dir) if check_tag(ckpt_dir, t) is None), None)


def resume_candidates(ckpt_dir: Path) -> list[str]:
    """Tags to try, best first: the one ``latest`` names, then every ``step_*`` directory, newest first."""
    ckpt_dir = Path(ckpt_dir)
    tags = step_tags(ckpt_dir)[::-1]
    named = (ckpt_dir / LATEST).read_text().strip() if (ckpt_dir / LATEST).is_file() else None
    return ([named] if named else []) + [t for t in tags if t != named]


def resume_tag(ckpt_dir: Path, say=print) -> Optional[str]:
    """Collective: the newest tag complete on every rank (rank 0's candidate order), or None when the stage has
    no checkpoint. Each newer tag passed over gets one line through ``say`` (rank 0) naming what was wrong;
    CheckpointError when checkpoints exist and none is complete."""
    candidates = mdist.broadcast_object(resume_candidates(ckpt_dir))
    if not candidates:
        return None
    problems = [check_tag(ckpt_dir, t) for t in candidates]
    complete = mdist.all_ranks([p is None for p in problems])
    for tag, problem, ok in zip(candidates, problems, complete):
        if ok:
            return tag
        if mdist.is_main_process():
            say(f"checkpoint {Path(ckpt_dir) / tag} is unusable ({problem or 'incomplete on another rank'}); "
                f"trying the previous one")
    raise CheckpointError(f"no complete checkpoint in {ckpt_dir} (tried {', '.join(candidates)}); remove the "
                          f"directory to start the stage afresh")


def load(engine, ckpt_dir: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model/optimizer/scheduler; returns (client_state, this rank's rank_state)."""
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir}/{tag}")
    rank_file = Path(ckpt_dir) / tag / f"rank_{mdist.get_rank():05d}.json"
    if not rank_file.is_file():
        raise RuntimeError(f"{rank_file} is missing: the checkpoint was written by a different world size; "
                           f"convert it with DeepSpeed's ds_to_universal or resume with the original world size")
    return client or {}, json.loads(rank_file.read_text())


# ------------------------------------------------------------------------------------------- fp32 weights / export
def fp32_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The model's fp32 master weights in a ZeRO checkpoint, named as the model names them (the engine wraps the
    task layer, which holds the model under :data:`~momo_ds.objectives.task.MODEL_PREFIX`)."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from momo_ds.objectives.task import model_state

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)  # its progress prints: kept quiet
    return model_state(state)


def tokenizer_file(encoder: Path) -> Path:
    """Where an export bundles its tokenizer: ``encoder.safetensors`` -> ``encoder.tokenizer.json``."""
    return Path(encoder).with_suffix(".tokenizer.json")


def export_encoder(model_fp32, path: Path, meta: dict[str, Any], tokenizer=None) -> Path:
    """Write ``model_fp32.export_state_dict()`` as safetensors plus ``<name>.json`` (config, tokenizer, stage).

    With ``tokenizer``, it is bundled as ``<name>.tokenizer.json`` and the JSON records that file's name, so the
    export folder alone is enough to use the encoder; ``tokenizer_source`` keeps what the recipe named.
    """
    from momo_ds.data.text import save_tokenizer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        meta = {**meta, "tokenizer_source": meta.get("tokenizer", tokenizer.name)}
        if save_tokenizer(tokenizer, tokenizer_file(path)):
            meta["tokenizer"] = tokenizer_file(path).name
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model_fp32.export_state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": "momo_ds.encoder", "stage": str(meta.get("stage", ""))})
    os.replace(tmp, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path
