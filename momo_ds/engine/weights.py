"""Where a stage's weights come from: the model built for the recipe and its data, then the previous stage's
encoder and heads (decoders start fresh) or, for stage 1, optionally timm/MAE ViT weights."""
from __future__ import annotations

from pathlib import Path

import torch

from momo_ds.config import ConfigError, ModelConfig, RecipeConfig
from momo_ds.model import parts


def build_stage_model(recipe: RecipeConfig, tokenizer) -> tuple[torch.nn.Module, ModelConfig]:
    """The stage's model in fp32 on the host; vocabulary and image size checked against the data."""
    from momo_ds.model import build_model

    # the padding id is the tokenizer's: settled before the config is validated, never patched in afterwards
    mcfg = recipe.model_config() if tokenizer is None else recipe.model_config(pad_token_id=tokenizer.pad_id)
    if tokenizer is not None and tokenizer.vocab_size > mcfg.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but model.vocab_size="
                          f"{mcfg.vocab_size}: set model.vocab_size={tokenizer.vocab_size}")
    if recipe.data.image_size != mcfg.img_size:
        raise ConfigError(f"data.image_size={recipe.data.image_size} differs from the model's img_size={mcfg.img_size}")
    return build_model(mcfg), mcfg


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A local weights file: safetensors, or a torch checkpoint read with ``weights_only=True`` (MAE releases
    nest the weights under "model")."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def init_from_mae(model: torch.nn.Module, path: str) -> None:
    """Initialise the image path of the encoder from timm/MAE ViT weights (decoders and text parts stay fresh)."""
    from momo_ds.model import from_timm_state_dict

    mapped = from_timm_state_dict(load_weights_file(path), model.cfg)
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"train.mae_checkpoint {path}: does not fit the model at {wrong[:3]}")
    model.load_state_dict(mapped, strict=False)


def init_from_previous(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the encoder, and the heads the previous stage has, from its fp32 weights; decoders start fresh.
    Unexpected or missing encoder weights are an error (a model config mismatch)."""
    try:
        parts.load_parts(model, state, required=("encoder",), optional=("contrastive", "itm_head", "lm_head"),
                         ignore=("decoders",))
    except ValueError as e:
        raise RuntimeError(f"initialising from {source}: {e} (model config mismatch?)") from None
