"""Resolve a DeepSpeed JSON config against a recipe.

The batch arithmetic of a CMGA step is derived once from the recipe: every optimizer step consumes one
micro-batch from every stream on every rank, so

    train_micro_batch_size_per_gpu = sum of the streams' batch sizes   (samples per rank per step)
    gradient_accumulation_steps    = 1                                  (CMGA accumulates over streams itself)
    train_batch_size               = micro × world size

Fields set to "auto" are filled in (``bf16.enabled: "auto"`` = bf16 on GPUs that support it, fp32 on CPU); a number that contradicts the recipe is a start-up error, never a silent change.
DeepSpeed's own ``optimizer``/``scheduler`` sections are refused: the trainer builds AdamW/FusedAdam with the
recipe's parameter groups and warm-up + cosine schedule.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from momo_ds.config import ConfigError, RecipeConfig


def load_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _fill(cfg: dict, key: str, value, why: str) -> None:
    have = cfg.get(key, "auto")
    if have == "auto":
        cfg[key] = value
    elif have != value:
        raise ConfigError(f"DeepSpeed config {key}={have} contradicts the recipe ({why} = {value}); "
                          f"set it to \"auto\" or change the recipe")


def resolve_ds_config(ds_cfg: dict[str, Any], recipe: RecipeConfig, world_size: int) -> dict[str, Any]:
    """A copy of ``ds_cfg`` with batch fields and clipping filled from ``recipe``; contradictions raise."""
    cfg = copy.deepcopy(ds_cfg)
    for section in ("optimizer", "scheduler"):
        if section in cfg:
            raise ConfigError(f"DeepSpeed config has an {section!r} section; momo-ds builds the optimizer and "
                              f"schedule from the recipe's train.* keys: remove it")
    micro = sum(s.batch_size for s in recipe.data.streams)
    sizes = " + ".join(f"{s.name}:{s.batch_size}" for s in recipe.data.streams)
    _fill(cfg, "gradient_accumulation_steps", 1, "CMGA accumulates over streams, so")
    _fill(cfg, "train_micro_batch_size_per_gpu", micro, f"streams {sizes}")
    _fill(cfg, "train_batch_size", micro * world_size, f"({sizes}) x world size {world_size}")
    _fill(cfg, "gradient_clipping", recipe.train.grad_clip, "train.grad_clip")
    for key in ("bf16", "fp16"):
        if cfg.get(key, {}).get("enabled") == "auto":
            cfg[key]["enabled"] = key == "bf16" and _accelerator_has_bf16()
    if cfg.get("bf16", {}).get("enabled") and cfg.get("fp16", {}).get("enabled"):
        raise ConfigError("DeepSpeed config enables both bf16 and fp16; choose one")
    return cfg


def _accelerator_has_bf16() -> bool:
    """bf16 where the accelerator computes it fast (CUDA GPUs with bf16); fp32 on CPUs, where bf16 matmuls are
    emulated (measured here: a tiny stage-3 step 6x slower in bf16 than in fp32)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def ds_dtype(cfg: dict[str, Any]):
    """The parameter dtype DeepSpeed trains the module in."""
    import torch

    if cfg.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if cfg.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def zero_stage(cfg: dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def uses_offload(cfg: dict[str, Any]) -> bool:
    z = cfg.get("zero_optimization", {})
    return any(z.get(k, {}).get("device", "none") not in ("none", None) for k in ("offload_optimizer", "offload_param"))
