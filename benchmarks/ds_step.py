"""The DeepSpeed step as the trainer builds it: ds_configs/ resolved against a recipe, the engine and its CMGA step
from momo_ds.engine.stage.build_engine (no loader, no checkpoints), and DeepSpeed's logging kept below the tables."""
from __future__ import annotations

from typing import Any, Optional

import torch

from checkout import ROOT


def quiet_deepspeed() -> None:
    """DeepSpeed's INFO logging drowns the tables."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


def ds_config_for(recipe, world: int, zero: int, dtype: str = "auto", path: Optional[str] = None) -> dict[str, Any]:
    """ds_configs/zero<N>.json (zero2.json for ZeRO-0, stage set to 0) resolved against the recipe like the
    trainer does; ``dtype`` "bf16"/"fp32" overrides bf16 "auto"."""
    from momo_ds.engine.ds_config import load_ds_config, resolve_ds_config

    cfg = resolve_ds_config(load_ds_config(path or ROOT / "ds_configs" / f"zero{max(zero, 1)}.json"), recipe, world)
    cfg.setdefault("zero_optimization", {})["stage"] = zero
    if dtype != "auto":
        cfg.setdefault("bf16", {})["enabled"] = dtype == "bf16"
    return cfg


def build_cmga(recipe, ds_cfg: dict[str, Any], device: torch.device, seed: int = 0):
    """(engine, CMGAStep, ModelConfig, dtype) built by the trainer's own momo_ds.engine.stage.build_engine (no
    loader, no checkpoints)."""
    from momo_ds.engine.ds_config import ds_dtype
    from momo_ds.engine.stage import build_engine
    from momo_ds.model import build_model

    torch.manual_seed(seed)
    model = build_model(recipe.model_config())
    engine, (cmga, *_) = build_engine(recipe, ds_cfg, model, device)
    return engine, cmga, model.cfg, ds_dtype(ds_cfg)
