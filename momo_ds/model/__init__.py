"""The MoMo model: embeddings, attention backends, the shared encoder, decoders, heads, export.

    model = build_model("tiny", depth=2)          # preset name or ModelConfig, keyword overrides
    out = model(image_batch, "mim")               # predictions: out["pixels"] at the masked patches
    loss = PretrainTask(model)(image_batch, {"mim": 1.0})["loss"]   # the losses: momo_ds.objectives.task
"""
from __future__ import annotations

from typing import Union

from momo_ds.config import ModelConfig
from momo_ds.model.export import (export_state_dict, from_timm_state_dict, resolve_config, timm_model_for,
                                   to_timm_state_dict)
from momo_ds.model.momo import MoMo


def build_model(preset_or_config: Union[str, ModelConfig] = "tiny", **overrides) -> MoMo:
    """Build MoMo from a preset (``tiny`` | ``base`` | ``large``) or a ModelConfig, with ModelConfig overrides.

    Builds on the current default device (``with torch.device("meta"):`` to count parameters without memory).
    """
    return MoMo(resolve_config(preset_or_config, **overrides))


__all__ = ["build_model", "MoMo", "resolve_config", "export_state_dict", "to_timm_state_dict",
           "timm_model_for", "from_timm_state_dict"]
