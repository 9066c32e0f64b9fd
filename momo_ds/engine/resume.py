"""Resuming a stage: which checkpoint, on the same or on another world size.

Same world size: DeepSpeed's own load of the ZeRO shards, this rank's loader position and RNG states: bitwise
the run that was not interrupted.

Another world size (elastic): the checkpoint is converted to DeepSpeed's universal format once
(:mod:`momo_ds.engine.universal`) and re-partitioned for this world; every rank reads the loader states of all
saved ranks and replays what the old layout had not consumed of its current epoch
(:meth:`momo_ds.data.loader.StageLoader.load_elastic_state`, guarantee in :mod:`momo_ds.data.elastic`); the
global RNG states are derived afresh from (seed, step, rank), since the saved ones belong to other ranks. The
per-device batch sizes of the recipe stay as they are, so the global batch scales with the world size; the LR
schedule stays a function of the step.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from momo_ds import distributed as mdist
from momo_ds.engine import checkpoint as ckpt


@dataclass
class ResumePlan:
    tag: Optional[str] = None  # None: start the stage afresh
    saved_world: int = 0
    world: int = 1

    @property
    def elastic(self) -> bool:
        return self.tag is not None and self.saved_world != self.world


def plan(ckpt_dir: Path, say: Callable[[str], None]) -> ResumePlan:
    """Collective: the newest complete checkpoint (see :func:`~momo_ds.engine.checkpoint.resume_tag`) and the
    world size that wrote it."""
    from momo_ds.engine.universal import saved_world_size

    tag = ckpt.resume_tag(ckpt_dir, say=say)
    world = mdist.get_world_size()
    if tag is None:
        return ResumePlan(world=world)
    saved = None
    if mdist.is_main_process():
        try:
            saved = saved_world_size(ckpt_dir, tag)
        except RuntimeError as e:
            saved = str(e)
    saved = mdist.broadcast_object(saved)
    if isinstance(saved, str):
        raise ckpt.CheckpointError(saved)
    return ResumePlan(tag=tag, saved_world=saved, world=world)


def engine_config(p: ResumePlan, ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config the engine is built from: an elastic resume needs the universal-load flag."""
    from momo_ds.engine.universal import universal_ds_config

    return universal_ds_config(ds_cfg) if p.elastic else ds_cfg


def restore(p: ResumePlan, engine, loader, ckpt_dir: Path, seed: int) -> dict[str, Any]:
    """Collective: load model, optimizer, schedule, data position and RNG; returns the client state."""
    from momo_ds.engine.universal import load_universal

    tag_dir = Path(ckpt_dir) / p.tag
    try:
        if not p.elastic:
            client, rank_state = ckpt.load(engine, ckpt_dir, p.tag)
        else:
            client = load_universal(engine, ckpt_dir, p.tag)
    except ckpt.CheckpointError:
        raise
    except Exception as e:  # complete by its manifest, yet unreadable: name it rather than trace back
        raise ckpt.CheckpointError(f"could not resume from {tag_dir}: "
                                   f"{' '.join(f'{type(e).__name__}: {e}'.split())[:400]}") from None
    if not p.elastic:
        loader.load_state_dict(rank_state["loader"])
        ckpt.set_rng_state(rank_state["rng"])
        return client
    states = [json.loads((tag_dir / f"rank_{r:05d}.json").read_text())["loader"] for r in range(p.saved_world)]
    loader.load_elastic_state(states)
    reseed(seed, int(client["step"]), mdist.get_rank())
    return client


def reseed(seed: int, step: int, rank: int) -> None:
    """Fresh global RNG states for (seed, step, rank): an elastic resume has no saved state for this rank."""
    from momo_ds.data.rng import mix_seed

    s = mix_seed(seed, "elastic-resume", step, rank)
    torch.manual_seed(s)  # CPU and every CUDA device
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)
