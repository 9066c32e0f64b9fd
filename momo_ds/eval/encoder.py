"""Load an exported encoder (``<out>/stageN/encoder.safetensors`` + its ``.json``) without the trainer."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from momo_ds.config import ConfigError, ModelConfig
from momo_ds.typed import from_dict


@dataclass
class LoadedEncoder:
    model: torch.nn.Module  # MoMo with no decoders, eval mode
    config: ModelConfig
    meta: dict[str, Any]
    tokenizer: Optional[str]  # the bundled tokenizer file, else the path/name recorded at export
    has_itm_head: bool  # False for exports written before the ITM head was exported (no ITM evaluation)


def parse_device(name, label: str = "device") -> torch.device:
    """A usable torch device; a typo or a CPU-only machine is a one-line ValueError (naming ``label``, e.g. the
    command-line flag), not a traceback mid-load."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{label} {name!r}: {' '.join(str(e).split())}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{label} {name}: CUDA is not available on this machine (use cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{label} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> LoadedEncoder:
    """Build the model from the export's recorded config and load its weights; one-line errors on mismatch."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"encoder file not found: {path}")
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} is missing: an exported encoder needs its config beside it")
    meta = json.loads(meta_path.read_text())
    if "model" not in meta:
        raise ValueError(f"{meta_path} has no 'model' config")
    return encoder_from(path, meta["model"], meta, _tokenizer_path(path, meta.get("tokenizer")), meta_path, device)


def encoder_from(weights: Path, model_fields: dict[str, Any], meta: dict[str, Any], tokenizer: Optional[str],
                 config_file: Path, device: str | torch.device = "cpu") -> LoadedEncoder:
    """The encoder of exported ``weights`` (safetensors) built from ``model_fields`` (ModelConfig values, as
    recorded beside an export or in an exported folder's config.json, named ``config_file`` in errors)."""
    from momo_ds.model import build_model
    from momo_ds.model.export import has_itm_head
    from momo_ds.model.parts import has_part

    try:
        cfg = from_dict(ModelConfig, {**model_fields, "decoders": []}, "model").validate()
    except ConfigError as e:
        raise ValueError(f"{config_file}: {e}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
    model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.export_state_dict().items()}
    wrong = [k for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]]
    if wrong:  # checked first: load_state_dict's own message is many lines long
        k = wrong[0]
        raise ValueError(f"encoder/config mismatch: {k} has shape {tuple(state[k].shape)} in {weights.name} but "
                         f"{shapes[k]} in the recorded config")
    heads = has_part(state, "contrastive")
    try:
        model.load_exported(state, heads=heads)
    except ValueError as e:
        raise ValueError(f"encoder/config mismatch in {weights.name}: {e}") from None
    model.to(device).eval()
    return LoadedEncoder(model=model, config=cfg, meta=meta, tokenizer=tokenizer,
                         has_itm_head=heads and has_itm_head(state))


def _tokenizer_path(encoder: Path, recorded: Optional[str]) -> Optional[str]:
    """The tokenizer an export names: a file bundled beside the encoder (recorded by name, so the folder can be
    moved), else the path or name the recipe gave."""
    if recorded and not Path(recorded).is_absolute() and (encoder.parent / recorded).is_file():
        return str(encoder.parent / recorded)
    return recorded

