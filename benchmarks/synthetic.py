"""Synthetic host batches of a stream's kind, size and mask ratios, masked by the loader's own
:mod:`momo_ds.data.collate`. Imported through :mod:`common`, which puts the checkout on sys.path first."""
from __future__ import annotations

import torch
from torch import Tensor

from momo_ds.config import ModelConfig, StreamConfig
from momo_ds.data.collate import mask_images, mask_pairs, mask_text


def synthetic_texts(b: int, max_len: int, vocab: int, gen: torch.Generator, min_frac: float = 0.5,
                    pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded random texts: ids [B, L] (no pad id inside), mask [B, L], lengths uniform in
    [max(2, min_frac * L), L]."""
    low = max(2, int(min_frac * max_len))
    lengths = torch.randint(low, max_len + 1, (b,), generator=gen)
    ids = torch.randint(1, vocab, (b, max_len), generator=gen)
    ids = torch.where(ids == pad_id, torch.ones_like(ids), ids)
    mask = torch.arange(max_len)[None] < lengths[:, None]
    return ids.masked_fill(~mask, pad_id), mask


def synthetic_batch(cfg: ModelConfig, stream: StreamConfig, gen: torch.Generator, min_text_frac: float = 0.5):
    """A host batch of the stream's kind, size and mask ratios: N(0, 1) images, random token ids."""
    b = stream.batch_size
    max_len = min(stream.max_text_len, cfg.max_text_len)
    if stream.kind in ("image", "pair"):
        images = torch.randn(b, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)
    if stream.kind in ("text", "pair"):
        ids, mask = synthetic_texts(b, max_len, cfg.vocab_size, gen, min_text_frac, cfg.pad_token_id)
    if stream.kind == "image":  # masked as the loader masks (momo_ds.data.collate)
        return mask_images(images, cfg.patch_size, stream.image_mask_ratio, gen)
    if stream.kind == "text":
        return mask_text(ids, mask, stream.text_mask_ratio, cfg.pad_token_id, gen)
    return mask_pairs(images, ids, mask, cfg.patch_size, stream.image_mask_ratio, stream.text_mask_ratio,
                      cfg.pad_token_id, gen, stream.align_mask_ratio)
