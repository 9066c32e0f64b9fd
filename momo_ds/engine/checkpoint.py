"""Checkpoints: atomic DeepSpeed saves with per-rank data/RNG state, exact resume, export, stage initialisation.

Layout of ``<stage_dir>/checkpoints``::

    step_00000040/            one DeepSpeed tag (model + optimizer shards, scheduler, client_state)
        rank_00000.json       this rank's data-loader position and RNG states
    latest                    the newest complete tag (written last, atomically)

A save goes to ``.tmp-step_…`` first and is renamed when every rank has finished, so a run killed mid-save
leaves the previous checkpoint as ``latest``. Nothing here unpickles files it did not write.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from momo_ds import distributed as mdist

LATEST = "latest"


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
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    tag, tmp_tag = tag_for(step), f".tmp-{tag_for(step)}"
    rank = mdist.get_rank()
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    mdist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    (ckpt_dir / tmp_tag).mkdir(parents=True, exist_ok=True)
    atomic_write_text(ckpt_dir / tmp_tag / f"rank_{rank:05d}.json", json.dumps(rank_state))
    mdist.barrier()
    if mdist.get_local_rank() == 0 and (ckpt_dir / tmp_tag).exists():  # each node's files (shared FS: first wins)
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        try:
            os.replace(ckpt_dir / tmp_tag, ckpt_dir / tag)
        except FileNotFoundError:
            pass
    mdist.barrier()
    if rank == 0:
        atomic_write_text(ckpt_dir / LATEST, tag)
        for old in sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())[:-max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    mdist.barrier()
    return ckpt_dir / tag


def latest_tag(ckpt_dir: Path) -> Optional[str]:
    f = Path(ckpt_dir) / LATEST
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


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
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from momo_ds.objectives.task import model_state

    return model_state(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag))


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
