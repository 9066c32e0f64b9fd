"""Samples → ImageBatch / TextBatch / PairBatch (momo_ds.batch), masks included: the one place batches are
masked. ``mask_images`` / ``mask_text`` / ``mask_pairs`` build batches from tensors (the loader's collate, and
the tests and benchmarks that need a batch without a dataset).

Padding goes only to the longest sequence of the batch, with the tokenizer's pad id.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batch import ImageBatch, PairBatch, TextBatch
from .masking import compact, draw_patch_masks, draw_text_masks
from .transforms import normalize_images


def mask_images(images: Tensor, patch_size: int, mask_ratio: float, generator: Optional[torch.Generator] = None,
                labels: Optional[Tensor] = None) -> ImageBatch:
    """images: [B, C, H, W] (normalised) -> ImageBatch with the patch split of :mod:`momo_ds.data.masking`."""
    b, _, h, w = images.shape
    keep, masked = draw_patch_masks(b, (h // patch_size) * (w // patch_size), mask_ratio, generator)
    return ImageBatch(images=images, patch_keep=keep, patch_masked=masked, labels=labels)


def mask_text(full_ids: Tensor, full_mask: Tensor, mask_ratio: float, pad_id: int = 0,
              generator: Optional[torch.Generator] = None) -> TextBatch:
    """full_ids: [B, L] int64 right-padded, full_mask: [B, L] bool (every row non-empty) -> TextBatch with the
    token split of :mod:`momo_ds.data.masking`."""
    if (~full_mask.any(dim=1)).any():
        raise ValueError("full_mask: empty text (a row has no real token)")
    lengths = full_mask.sum(dim=1)
    masked = draw_text_masks(lengths, mask_ratio, generator)  # [B, longest text]
    masked = F.pad(masked, (0, full_ids.shape[1] - masked.shape[1]))
    vis_pos, vis_valid = compact(full_mask & ~masked)
    msk_pos, msk_valid = compact(masked)
    pad = torch.full_like(vis_pos, pad_id)
    input_ids = torch.where(vis_valid, full_ids.gather(1, vis_pos), pad)
    masked_ids = torch.where(msk_valid, full_ids.gather(1, msk_pos), torch.full_like(msk_pos, pad_id))
    return TextBatch(input_ids=input_ids, positions=vis_pos, attention_mask=vis_valid, masked_positions=msk_pos,
                     masked_ids=masked_ids, masked_valid=msk_valid, full_ids=full_ids, full_mask=full_mask)


def mask_pairs(images: Tensor, full_ids: Tensor, full_mask: Tensor, patch_size: int, image_mask_ratio: float,
               text_mask_ratio: float, pad_id: int = 0, generator: Optional[torch.Generator] = None,
               align_mask_ratio: Optional[float] = None) -> PairBatch:
    """Row i of the images belongs with row i of the text; CMM masks drawn on both, then (when
    ``align_mask_ratio`` is given) the patches contrastive and ITM see, from the same generator: the CMM masks
    are the same with or without it."""
    image = mask_images(images, patch_size, image_mask_ratio, generator)
    text = mask_text(full_ids, full_mask, text_mask_ratio, pad_id, generator)
    align_keep = None
    if align_mask_ratio is not None:
        num_patches = image.patch_keep.shape[1] + image.patch_masked.shape[1]
        align_keep = draw_patch_masks(image.batch_size, num_patches, align_mask_ratio, generator)[0]
    return PairBatch(image=image, text=text, align_keep=align_keep)


def pad_texts(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """B non-empty token id lists -> (ids [B, L] right-padded with ``pad_id``, mask [B, L]), L = the longest."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    full = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        full[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return full, torch.arange(full.shape[1]).expand(len(seqs), -1) < lengths[:, None]


def collate_images(images: Sequence[Tensor], labels: Optional[Sequence[Optional[int]]], patch_size: int,
                   mask_ratio: float, generator: torch.Generator) -> ImageBatch:
    """images: B uint8 [3, H, W]; labels: B ints or None (-1 marks a missing label in a labelled batch)."""
    lab = None
    if labels is not None and any(v is not None for v in labels):
        lab = torch.tensor([-1 if v is None else v for v in labels], dtype=torch.long)
    return mask_images(normalize_images(torch.stack(list(images))), patch_size, mask_ratio, generator, lab)


def collate_texts(seqs: Sequence[Sequence[int]], pad_id: int, mask_ratio: float,
                  generator: torch.Generator) -> TextBatch:
    """seqs: B non-empty token id lists (no special tokens) → TextBatch with MLM/CMM masks drawn."""
    return mask_text(*pad_texts(seqs, pad_id), mask_ratio, pad_id, generator)


def collate_pairs(images: Sequence[Tensor], seqs: Sequence[Sequence[int]], patch_size: int, pad_id: int,
                  image_mask_ratio: float, text_mask_ratio: float, generator: torch.Generator,
                  align_mask_ratio: Optional[float] = None) -> PairBatch:
    """B uint8 images and B token id lists → PairBatch (:func:`mask_pairs`)."""
    return mask_pairs(normalize_images(torch.stack(list(images))), *pad_texts(seqs, pad_id), patch_size,
                      image_mask_ratio, text_mask_ratio, pad_id, generator, align_mask_ratio)
