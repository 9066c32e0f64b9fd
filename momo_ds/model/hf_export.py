"""A trained encoder as a Hugging Face-style folder, and its image tower as a timm model.

    from momo_ds.model.hf_export import save_pretrained, timm_create_kwargs
    save_pretrained("runs/momo-tiny/stage3/encoder.safetensors", "momo-tiny-hf")   # or tools/export.py
    m = momo_ds.load_pretrained("momo-tiny-hf")             # bitwise the same features as the export

    import timm
    vit = timm.create_model(**timm_create_kwargs("momo-tiny-hf"))   # image tower, nothing downloaded
    cfg = timm.data.resolve_data_config({}, model=vit)              # ImageNet mean/std, the eval resize + crop
    pooled = vit(timm.data.create_transform(**cfg)(pil_image)[None])  # ~= m.cls_features(pil_image), 1e-6

``timm_create_kwargs`` spells out ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(
file=<folder>/timm_model.safetensors, mean=IMAGENET_MEAN, std=IMAGENET_STD, ...), num_classes=0, **shape)``;
the overlay replaces timm's defaults for the name (mean/std 0.5, 224 px), so timm's data config is the one the
model was trained and evaluated with. Folder contents (no pickles anywhere):

  config.json              model_type "momo", architectures, momo_ds_version, every ModelConfig field
                           (decoders [] : the folder holds none), has_itm_head, "export" (what encoder.json
                           recorded besides the config) and "timm" (model name, kwargs, pretrained_cfg_overlay)
  model.safetensors        the exported weights under MoMo's names (``build_model(ModelConfig(**fields))``
                           loads them with strict=True)
  timm_model.safetensors   :func:`~momo_ds.model.export.to_timm_state_dict` of them (num_classes=0)
  tokenizer.json           the training tokenizer without a post-processor: MoMo adds its own [CLS], so
                           ``AutoTokenizer.from_pretrained(folder)(text)`` gives exactly the ids MoMo reads
  tokenizer_config.json, special_tokens_map.json, preprocessor_config.json (the evaluation transform)
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from momo_ds.config import ModelConfig
from momo_ds.data.transforms import EVAL_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from momo_ds.data.text import Tokenizer
    from momo_ds.eval.encoder import LoadedEncoder
    from momo_ds.pretrained import Pretrained

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
TIMM_WEIGHTS = "timm_model.safetensors"
MODEL_TYPE = "momo"
# timm architectures whose defaults match a MoMo image tower; a config is named after the one it differs least from
_TIMM_ARCHS = {
    "vit_base_patch16_224": dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                                 mlp_ratio=4.0),
    "vit_large_patch16_224": dict(img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                                  mlp_ratio=4.0),
}
TIMM_LN_EPS = 1e-6  # timm's ViT LayerNorm; any other eps would need a norm_layer callable, not JSON
_BERT_SPECIAL = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}


def resize_size(image_size: int, crop_pct: float = EVAL_CROP_PCT) -> int:
    """Shorter side before the centre crop, as ``build_image_transform("none", ...)`` computes it."""
    return int(round(image_size / crop_pct))


def timm_crop_pct(image_size: int) -> float:
    """The crop_pct for which timm's eval transform (shorter side ``floor(S / crop_pct)``) resizes to the
    project's ``round(S / 0.875)``: 0.875 itself where floor and round agree (224 px), else nudged (32 px: 37)."""
    target = resize_size(image_size)
    return EVAL_CROP_PCT if int(image_size / EVAL_CROP_PCT) == target else image_size / (target + 0.5)


def timm_spec(cfg: ModelConfig) -> Optional[dict[str, Any]]:
    """{"model_name", "kwargs", "pretrained_cfg_overlay" (no "file")} of the image tower, or None where timm's
    VisionTransformer cannot express it from JSON (a LayerNorm eps other than 1e-6)."""
    if cfg.ln_eps != TIMM_LN_EPS:
        return None
    ours = {k: getattr(cfg, k) for k in _TIMM_ARCHS["vit_base_patch16_224"]}
    name = min(_TIMM_ARCHS, key=lambda n: sum(ours[k] != v for k, v in _TIMM_ARCHS[n].items()))
    kwargs = {k: v for k, v in ours.items() if _TIMM_ARCHS[name][k] != v}
    overlay = dict(custom_load=False,  # vit_large's default cfg loads .npz files by custom code: never ours
                   num_classes=0,  # timm then loads strictly (it drops the head and loads leniently otherwise)
                   input_size=[cfg.in_chans, cfg.img_size, cfg.img_size], crop_pct=timm_crop_pct(cfg.img_size),
                   crop_mode="center", interpolation="bicubic", mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return {"model_name": name, "kwargs": {**kwargs, "num_classes": 0}, "pretrained_cfg_overlay": overlay}


def timm_create_kwargs(folder: Union[str, Path]) -> dict[str, Any]:
    """Arguments of ``timm.create_model(**kwargs)`` that load the folder's image tower from its own file (no
    download); ValueError when the folder has no timm weights."""
    folder = Path(folder).expanduser().resolve()
    spec = read_config(folder).get("timm")
    if not spec or not (folder / TIMM_WEIGHTS).is_file():
        raise ValueError(f"{folder}: no timm image tower ({TIMM_WEIGHTS}); export with timm=True / --timm")
    overlay = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["pretrained_cfg_overlay"].items()}
    return {"model_name": spec["model_name"], "pretrained": True, **spec["kwargs"],
            "pretrained_cfg_overlay": {**overlay, "file": str(folder / TIMM_WEIGHTS)}}


def preprocessor_config(cfg: ModelConfig) -> dict[str, Any]:
    """HF image-processor keys of the evaluation transform: bicubic resize of the shorter side to round(S/0.875),
    centre crop S, x/255, ImageNet mean/std. (HF floors an odd crop offset where torchvision rounds it: HF's
    processor can sit one pixel off the project's crop; timm's, which uses torchvision, does not.)"""
    return {"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True, "do_resize": True,
            "size": {"shortest_edge": resize_size(cfg.img_size)}, "resample": 3,  # PIL.Image.BICUBIC
            "do_center_crop": True, "crop_size": {"height": cfg.img_size, "width": cfg.img_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}


def _tokenizer_files(tok: "Tokenizer", tmp: Path, max_len: int) -> None:
    """tokenizer.json (post-processor removed: MoMo's text has no [CLS]/[SEP] of the tokenizer's), its config and
    special-token map."""
    from momo_ds.data.text import _PAD_CANDIDATES, Tokenizer, save_tokenizer

    if not tok._fast:
        raise ValueError(f"tokenizer {tok.name}: a Python-only tokenizer has no tokenizer.json form to export")
    backend = copy.deepcopy(tok._backend)
    backend.post_processor = None
    save_tokenizer(Tokenizer(backend, tok.name, tok.pad_id, tok.vocab_size), tmp / TOKENIZER)
    special = {k: t for k, t in _BERT_SPECIAL.items() if backend.token_to_id(t) is not None}
    pad = next((t for t in _PAD_CANDIDATES if backend.token_to_id(t) == tok.pad_id), None)
    special = {**({"pad_token": pad} if pad else {}), **special}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, "padding_side": "right",
              "truncation_side": "right", "clean_up_tokenization_spaces": False, **special}
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _source(source: Union[str, Path, nn.Module, "Pretrained"], tokenizer) -> tuple[nn.Module, dict, "Tokenizer"]:
    """(model, export metadata, tokenizer) of an export path, a Pretrained or a MoMo model."""
    from momo_ds.data import load_tokenizer
    from momo_ds.pretrained import Pretrained, load_pretrained

    if isinstance(source, (str, Path)):
        source = load_pretrained(source, tokenizer=tokenizer)
    if isinstance(source, Pretrained):
        if source.tokenizer is None:
            raise ValueError(f"{source.source}: no tokenizer recorded with the encoder: pass tokenizer=")
        return source.model, source.meta, source.tokenizer
    if not isinstance(source, nn.Module) or not isinstance(getattr(source, "cfg", None), ModelConfig):
        raise ValueError(f"save_pretrained: expected an export path, a Pretrained or a MoMo model, "
                         f"got {type(source).__name__}")
    if tokenizer is None:
        raise ValueError("save_pretrained(model, ...): pass tokenizer= (a Tokenizer or a tokenizer path)")
    return source, {"model": dataclasses.asdict(source.cfg)}, (
        tokenizer if hasattr(tokenizer, "encode_one") else load_tokenizer(tokenizer))


def save_pretrained(source: Union[str, Path, nn.Module, "Pretrained"], folder: Union[str, Path],
                    tokenizer=None, *, timm: Optional[bool] = None, overwrite: bool = False) -> Path:
    """Write the HF-style folder (module docstring) atomically: built in a temporary sibling, then renamed.

    source: ``encoder.safetensors``, its stage folder, another such folder, a Pretrained or a MoMo model;
    tokenizer: a Tokenizer or path (default: the one recorded with the export); timm: write the timm tower
    (None: where timm can express it, True: required); an existing ``folder`` is an error unless ``overwrite``.
    """
    from safetensors.torch import save_file

    from momo_ds import __version__
    from momo_ds.eval.runner import DEFAULT_MAX_LEN
    from momo_ds.model.export import export_state_dict, has_itm_head, to_timm_state_dict

    folder = Path(folder).expanduser()
    if folder.exists() and not (overwrite and folder.is_dir()):
        raise ValueError(f"{folder} exists; pass overwrite=True (--overwrite) to replace it" if folder.is_dir()
                         else f"{folder} exists and is not a folder")
    model, meta, tok = _source(source, tokenizer)
    cfg = dataclasses.replace(model.cfg, decoders=[])
    spec = timm_spec(cfg) if timm is not False else None
    if timm and spec is None:
        raise ValueError(f"timm export: model.ln_eps={cfg.ln_eps}; timm's ViT uses {TIMM_LN_EPS}")
    state = {k: v.detach().cpu().contiguous() for k, v in export_state_dict(model).items()}
    config = {"model_type": MODEL_TYPE, "architectures": ["MoMo"], "momo_ds_version": __version__,
              "torch_dtype": str(state["cls_token"].dtype).removeprefix("torch."), **dataclasses.asdict(cfg),
              "has_itm_head": has_itm_head(state),
              "export": {**{k: v for k, v in meta.items() if k not in ("model", "tokenizer")},
                         "trained_decoders": list(meta.get("trained_decoders", meta.get("model", {}).get(
                             "decoders", model.cfg.decoders)))}}
    if spec is not None:
        config["timm"] = spec
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if spec is not None:
            timm_state = {k: v.contiguous() for k, v in to_timm_state_dict(state, cfg).items()}
            save_file(timm_state, str(tmp / TIMM_WEIGHTS), metadata={"format": "pt"})
        _tokenizer_files(tok, tmp, min(DEFAULT_MAX_LEN, cfg.max_text_len))
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(cfg), indent=2))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))  # last: a folder with a config is complete
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` is moved aside first and removed only afterwards
    (a directory cannot be renamed over a non-empty one)."""
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:
        if old.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a folder written by :func:`save_pretrained` (one-line ValueError otherwise)."""
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path}: model_type is not {MODEL_TYPE!r} (not a folder written by save_pretrained)")
    return config


def load_folder(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "LoadedEncoder":
    """The encoder of a :func:`save_pretrained` folder, as :func:`momo_ds.eval.encoder.load_encoder` gives an
    export (same model, config and checks; tokenizer: the folder's tokenizer.json)."""
    from momo_ds.eval.encoder import encoder_from

    folder = Path(folder)
    config = read_config(folder)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_fields = {k: config[k] for k in fields if k in config}
    tok = folder / TOKENIZER
    meta = {**config.get("export", {}), "model": model_fields}
    return encoder_from(folder / WEIGHTS, model_fields, meta, str(tok) if tok.is_file() else None,
                        folder / CONFIG, device)
