"""Reference mask drawing for tests, benchmarks and evaluation scripts.

Training masks are drawn by the data pipeline (``momo_ds.data``) on loader workers; these helpers build the same
batch contract (:mod:`momo_ds.batch`) from plain tensors. They size outputs from the drawn masks (a host sync),
which is fine off the training hot path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from momo_ds.batch import ImageBatch, PairBatch, TextBatch
from momo_ds.model.validate import check_mask_ratio


def random_patch_masks(batch: int, num_patches: int, mask_ratio: float, generator: Optional[torch.Generator] = None,
                       device=None) -> tuple[Tensor, Tensor]:
    """Uniform random patch split, the same count per image (MAE): keep [B, Nk], masked [B, Nm], both sorted.

    Nk = max(1, int(N * (1 - mask_ratio))), e.g. 49 of 196 at 75%.
    """
    check_mask_ratio(mask_ratio)
    n_keep = max(1, int(num_patches * (1.0 - mask_ratio)))
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    keep, masked = order[:, :n_keep].sort(dim=1).values, order[:, n_keep:].sort(dim=1).values
    return keep.to(device), masked.to(device)


def mask_images(images: Tensor, patch_size: int, mask_ratio: float, labels: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> ImageBatch:
    """images: [B, C, H, W] -> ImageBatch with a random patch split."""
    num_patches = (images.shape[-2] // patch_size) * (images.shape[-1] // patch_size)
    keep, masked = random_patch_masks(images.shape[0], num_patches, mask_ratio, generator, images.device)
    return ImageBatch(images=images, patch_keep=keep, patch_masked=masked, labels=labels)


def _compact(flags: Tensor, values: Tensor, fill: int) -> tuple[Tensor, Tensor, Tensor]:
    """Left-pack the columns where ``flags`` [B, L] is True, keeping their order.

    returns (values [B, K], original positions [B, K], valid [B, K]) with K = max row count; ``fill`` elsewhere.
    """
    length = flags.shape[1]
    col = torch.arange(length, device=flags.device).expand_as(flags)
    order = torch.where(flags, col, col + length).argsort(dim=1)
    k = int(flags.sum(dim=1).max()) if flags.numel() else 0
    order = order[:, :k]
    valid = torch.gather(flags, 1, order)
    vals = torch.where(valid, torch.gather(values, 1, order), torch.full_like(order, fill))
    pos = torch.where(valid, order, torch.zeros_like(order))
    return vals, pos, valid


def mask_text(full_ids: Tensor, full_mask: Tensor, mask_ratio: float, pad_id: int = 0,
              generator: Optional[torch.Generator] = None) -> TextBatch:
    """Mask round(ratio * length) tokens of each text uniformly at random, keeping at least one visible.

    full_ids: [B, L] int64 right-padded, full_mask: [B, L] bool -> TextBatch
    """
    check_mask_ratio(mask_ratio)
    if (~full_mask.any(dim=1)).any():
        raise ValueError("full_mask: empty text (a row has no real token)")
    lengths = full_mask.sum(dim=1)
    n_mask = torch.minimum((lengths.double() * mask_ratio).round().long(), lengths - 1)
    scores = torch.rand(full_ids.shape, generator=generator).to(full_ids.device)
    scores = scores.masked_fill(~full_mask, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    masked = full_mask & (rank < n_mask[:, None])
    visible = full_mask & ~masked
    ids, positions, attention = _compact(visible, full_ids, pad_id)
    masked_ids, masked_positions, masked_valid = _compact(masked, full_ids, pad_id)
    return TextBatch(input_ids=ids, positions=positions, attention_mask=attention, masked_positions=masked_positions,
                     masked_ids=masked_ids, masked_valid=masked_valid, full_ids=full_ids, full_mask=full_mask)


def mask_pairs(images: Tensor, full_ids: Tensor, full_mask: Tensor, patch_size: int,
               image_mask_ratio: float = 0.75, text_mask_ratio: float = 0.75, pad_id: int = 0,
               generator: Optional[torch.Generator] = None) -> PairBatch:
    """PairBatch with CMM masks on both modalities (75% / 75% by default, as the paper)."""
    return PairBatch(image=mask_images(images, patch_size, image_mask_ratio, generator=generator),
                     text=mask_text(full_ids, full_mask, text_mask_ratio, pad_id, generator))
