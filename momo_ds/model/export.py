"""Export: encoder-only weights, and their conversion to a timm VisionTransformer (image path).

What ``export_state_dict`` keeps (the paper discards the decoders after pretraining):
  cls_token, image_embed.* (patch projection), text_embed.* (token + position embeddings), type_embed.*,
  encoder.* (blocks + final norm) and, with ``heads=True``, the contrastive projections and logit_scale
  (zero-shot retrieval) and the ITM head (held-out image-text matching; untrained in stage 1/2 exports, which
  never see an ITM objective). Never: decoders, the MLM output bias.
Exports written before the ITM head was exported lack it; they still load (see :func:`has_itm_head`).
The fixed sin-cos image positions are not weights (a non-persistent buffer recomputed from the config).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import Tensor, nn

from momo_ds.config import ModelConfig, model_preset
from momo_ds.typed import from_dict
from momo_ds.model import parts
from momo_ds.model.embeddings import sincos_2d

if TYPE_CHECKING:
    from momo_ds.model.momo import MoMo

def resolve_config(preset_or_config: Union[str, ModelConfig], **overrides) -> ModelConfig:
    """A validated ModelConfig from a preset name or a ModelConfig, with keyword overrides (unknown key = error)."""
    if isinstance(preset_or_config, str):
        return model_preset(preset_or_config, **overrides)
    if isinstance(preset_or_config, ModelConfig):
        values = {**dataclasses.asdict(preset_or_config), **overrides}
        return from_dict(ModelConfig, values, "model").validate()
    raise TypeError(f"expected a preset name or a ModelConfig, got {type(preset_or_config).__name__}")


def export_state_dict(model: "MoMo", heads: bool = True) -> dict[str, Tensor]:
    """The exported subset of ``model.state_dict()`` (tensors share storage with the model)."""
    return parts.select(model.state_dict(), parts.EXPORT_PARTS if heads else ("encoder",))


def has_itm_head(state: dict[str, Tensor]) -> bool:
    """Whether an export carries the ITM head (exports written before it was exported do not)."""
    return parts.has_part(state, "itm_head")


def load_exported(model: "MoMo", state: dict[str, Tensor], heads: bool = True) -> None:
    """Load an export into ``model``; every exported key must be present and match (the rest stays as is).

    The one exception: an export with no ITM head at all (written before it was exported) loads, and the model
    keeps its own head; callers that need a trained one check :func:`has_itm_head`. A partial head is an error.
    ``heads=False`` loads the encoder alone and leaves the export's heads unread.
    """
    if heads:
        parts.load_parts(model, state, required=("encoder", "contrastive"), optional=("itm_head",))
    else:
        parts.load_parts(model, state, required=("encoder",), ignore=("contrastive", "itm_head"))


def to_timm_state_dict(exported: dict[str, Tensor],
                       preset_or_config: Union[str, ModelConfig]) -> dict[str, Tensor]:
    """Exported MoMo weights -> state dict of timm's VisionTransformer (image path, ``global_pool='token'``).

    timm adds ``pos_embed`` [1, 1 + N, D] to [CLS, patches]: our [CLS] gets no position or type, our patches
    get sin-cos positions + the image type embedding, so both fold into it. Blocks and the final norm keep
    their names (minus ``encoder.``). Load with ``strict=True`` into :func:`timm_model_for` (or
    ``timm.create_model('vit_base_patch16_224', num_classes=0)`` / ``vit_large_patch16_224`` for base / large).
    """
    cfg = resolve_config(preset_or_config)
    patch_w = exported["image_embed.patch_embed.proj.weight"]
    dim = patch_w.shape[0]
    image_type = exported["type_embed.weight"][0]
    pos = sincos_2d(cfg.img_size // cfg.patch_size, dim).to(image_type) + image_type
    out = {
        "cls_token": exported["cls_token"],
        "pos_embed": torch.cat([torch.zeros_like(pos[:1]), pos])[None],
        "patch_embed.proj.weight": patch_w,
        "patch_embed.proj.bias": exported["image_embed.patch_embed.proj.bias"],
    }
    for k, v in exported.items():
        if k.startswith("encoder."):
            out[k[len("encoder."):]] = v
    return out


def timm_model_for(preset_or_config: Union[str, ModelConfig]) -> nn.Module:
    """An uninitialised timm VisionTransformer with this config's image-encoder shape (no download)."""
    from timm.models.vision_transformer import VisionTransformer  # noqa: PLC0415 (only needed at export)

    cfg = resolve_config(preset_or_config)
    return VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, num_classes=0,
        global_pool="token", class_token=True, norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps), weight_init="skip")


def from_timm_state_dict(timm_state: dict[str, Tensor], preset_or_config: Union[str, ModelConfig],
                         text_type: Optional[Tensor] = None, atol: float = 1e-3) -> dict[str, Tensor]:
    """timm ViT weights (e.g. ``vit_base_patch16_224.mae``, or :func:`to_timm_state_dict` output) -> MoMo names.

    Inverse of :func:`to_timm_state_dict` for the image path; load the result with ``strict=False``. timm's CLS
    position folds into ``cls_token``; the mean offset of its patch positions from our fixed sin-cos table becomes
    the image type embedding (0 for MAE, whose positions are this sin-cos table), ``text_type`` [D] (default 0)
    the text row. Positions that are not sin-cos + a constant (a learned table) raise ValueError.
    """
    cfg = resolve_config(preset_or_config)
    pos = timm_state["pos_embed"][0]  # [1 + N, D]
    table = sincos_2d(cfg.img_size // cfg.patch_size, pos.shape[-1]).to(pos)
    if pos.shape[0] != table.shape[0] + 1:
        raise ValueError(f"timm pos_embed has {pos.shape[0]} rows, expected 1 + {table.shape[0]} for this config")
    image_type = (pos[1:] - table).mean(dim=0)
    deviation = float((pos[1:] - table - image_type).abs().max())
    if deviation > atol:
        raise ValueError(f"timm pos_embed is not the fixed 2-D sin-cos table (max deviation {deviation:.3g}); "
                         f"MoMo uses fixed sin-cos image positions")
    text_type = torch.zeros_like(image_type) if text_type is None else text_type.to(image_type)
    out = {
        "cls_token": timm_state["cls_token"] + pos[:1][None],
        "type_embed.weight": torch.stack([image_type, text_type]),
        "image_embed.patch_embed.proj.weight": timm_state["patch_embed.proj.weight"],
        "image_embed.patch_embed.proj.bias": timm_state["patch_embed.proj.bias"],
    }
    for k, v in timm_state.items():
        if k.startswith(("blocks.", "norm.")):
            out["encoder." + k] = v
    return out
