"""Samples → ImageBatch / TextBatch / PairBatch (momo_ds.batch), masks included.

Padding goes only to the longest sequence of the batch, with the tokenizer's pad id.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..batch import ImageBatch, PairBatch, TextBatch
from .masking import compact, draw_patch_masks, draw_text_masks
from .transforms import normalize_images


def collate_images(images: Sequence[Tensor], labels: Optional[Sequence[Optional[int]]], patch_size: int,
                   mask_ratio: float, generator: torch.Generator) -> ImageBatch:
    """images: B uint8 [3, H, W]; labels: B ints or None (-1 marks a missing label in a labelled batch)."""
    x = normalize_images(torch.stack(list(images)))
    b, _, h, w = x.shape
    keep, masked = draw_patch_masks(b, (h // patch_size) * (w // patch_size), mask_ratio, generator)
    lab = None
    if labels is not None and any(v is not None for v in labels):
        lab = torch.tensor([-1 if v is None else v for v in labels], dtype=torch.long)
    return ImageBatch(images=x, patch_keep=keep, patch_masked=masked, labels=lab)


def collate_texts(seqs: Sequence[Sequence[int]], pad_id: int, mask_ratio: float,
                  generator: torch.Generator) -> TextBatch:
    """seqs: B non-empty token id lists (no special tokens) → TextBatch with MLM/CMM masks drawn."""
    b = len(seqs)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    width = int(lengths.max())
    full = torch.full((b, width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        full[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    full_mask = torch.arange(width).expand(b, -1) < lengths[:, None]
    masked = draw_text_masks(lengths, mask_ratio, generator)
    vis_pos, vis_valid = compact(full_mask & ~masked)
    msk_pos, msk_valid = compact(masked)
    pad = torch.full_like(vis_pos, pad_id)
    input_ids = torch.where(vis_valid, full.gather(1, vis_pos), pad)
    masked_ids = torch.where(msk_valid, full.gather(1, msk_pos), torch.full_like(msk_pos, pad_id))
    return TextBatch(input_ids=input_ids, positions=vis_pos, attention_mask=vis_valid, masked_positions=msk_pos,
                     masked_ids=masked_ids, masked_valid=msk_valid, full_ids=full, full_mask=full_mask)


def collate_pairs(images: Sequence[Tensor], seqs: Sequence[Sequence[int]], patch_size: int, pad_id: int,
                  image_mask_ratio: float, text_mask_ratio: float, generator: torch.Generator,
                  align_mask_ratio: Optional[float] = None) -> PairBatch:
    """Row i of the image batch belongs with row i of the text batch; CMM masks drawn on both, then (when
    ``align_mask_ratio`` is given) the patches contrastive and ITM see, from the same generator: the CMM masks
    are the same with or without it."""
    image = collate_images(images, None, patch_size, image_mask_ratio, generator)
    text = collate_texts(seqs, pad_id, text_mask_ratio, generator)
    align_keep = None
    if align_mask_ratio is not None:
        num_patches = image.patch_keep.shape[1] + image.patch_masked.shape[1]
        align_keep = draw_patch_masks(image.batch_size, num_patches, align_mask_ratio, generator)[0]
    return PairBatch(image=image, text=text, align_keep=align_keep)
