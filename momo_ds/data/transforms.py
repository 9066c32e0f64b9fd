"""Image transforms: PIL RGB image → uint8 tensor [3, S, S]; normalisation happens per batch in collate.

``augment`` (StreamConfig.augment):
  rrc      RandomResizedCrop(S, bicubic) + horizontal flip (MAE); scale (0.2, 1) for image streams,
           (0.5, 1) for pair streams (a caption describes the whole picture; ALBEF/BLIP use 0.5).
  randaug  rrc + timm RandAugment ``rand-m9-mstd0.5-inc1``. Pair streams use only ops that keep colours
           (geometry, brightness, contrast, sharpness): captions name colours, Invert/Solarize/Equalize... would
           contradict them.
  none     resize the shorter side to S / crop_pct (bicubic) + center crop S (evaluation).
"""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDAUG_CONFIG = "rand-m9-mstd0.5-inc1"
EVAL_CROP_PCT = 0.875
_COLOUR_SAFE_OPS = ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "BrightnessIncreasing",
                    "ContrastIncreasing", "SharpnessIncreasing"]


def crop_scale(kind: str) -> tuple[float, float]:
    return (0.5, 1.0) if kind == "pair" else (0.2, 1.0)


def build_image_transform(augment: str, image_size: int, kind: str = "image",
                          crop_pct: float = EVAL_CROP_PCT) -> Callable[[Image.Image], Tensor]:
    """The per-sample transform of a stream; draws from the global RNGs (see rng.isolated_global_rng)."""
    bicubic = InterpolationMode.BICUBIC
    if augment == "none":
        return T.Compose([T.Resize(int(round(image_size / crop_pct)), interpolation=bicubic),
                          T.CenterCrop(image_size), T.PILToTensor()])
    ops: list = [T.RandomResizedCrop(image_size, scale=crop_scale(kind), interpolation=bicubic),
                 T.RandomHorizontalFlip()]
    if augment == "randaug":
        from timm.data.auto_augment import rand_augment_transform

        hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(round(255 * m) for m in IMAGENET_MEAN))
        ops.append(rand_augment_transform(RANDAUG_CONFIG, hparams,
                                          transforms=_COLOUR_SAFE_OPS if kind == "pair" else None))
    elif augment != "rrc":
        raise ValueError(f"augment={augment!r}; valid: rrc, randaug, none")
    ops.append(T.PILToTensor())
    return T.Compose(ops)


def normalize_images(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] → float32 [B, 3, H, W] normalised with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return images.to(torch.float32).sub_(mean).div_(std)  # (x/255 - m)/s == (x - 255m)/(255s): one pass less
