"""Deterministic hand-built batches for trainer tests: random images and token ids, masked by the loader's own
batch builders (momo_ds.data.collate), so trainer tests run the batches the loader produces."""
from __future__ import annotations

import torch

from momo_ds.batch import ImageBatch, PairBatch, TextBatch
from momo_ds.data.collate import mask_images, mask_text


def image_batch(g: torch.Generator, b: int, img: int, patch: int, ratio: float) -> ImageBatch:
    images = torch.randn(b, 3, img, img, generator=g)
    return mask_images(images, patch, ratio, g, labels=torch.randint(0, 4, (b,), generator=g))


def text_batch(g: torch.Generator, b: int, vocab: int, max_len: int, ratio: float, pad: int = 0) -> TextBatch:
    lengths = torch.randint(3, max_len + 1, (b,), generator=g)
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ids = torch.randint(1, vocab, (b, width), generator=g).masked_fill(~mask, pad)
    return mask_text(ids, mask, ratio, pad, g)


def pair_batch(g, b, img, patch, vocab, max_len, img_ratio=0.75, txt_ratio=0.75) -> PairBatch:
    return PairBatch(image=image_batch(g, b, img, patch, img_ratio), text=text_batch(g, b, vocab, max_len, txt_ratio))


def slice_batch(batch, start: int, stop: int):
    """Rows [start, stop) of a batch (text re-trimmed to the longest remaining row is not needed: padding is
    allowed up to any length, which the model tests show does not change outputs)."""
    import dataclasses

    def cut(obj):
        changes = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, torch.Tensor):
                changes[f.name] = v[start:stop]
            elif dataclasses.is_dataclass(v):
                changes[f.name] = cut(v)
        return dataclasses.replace(obj, **changes)
    return cut(batch)
