"""Deterministic hand-built batches for trainer tests (the loader has its own tests): random images and token
ids with exact-count masks, built the way batch.py documents, independent of the data pipeline."""
from __future__ import annotations

import torch

from momo_ds.batch import ImageBatch, PairBatch, TextBatch


def image_batch(g: torch.Generator, b: int, img: int, patch: int, ratio: float) -> ImageBatch:
    n = (img // patch) ** 2
    n_mask = int(round(ratio * n))
    order = torch.rand(b, n, generator=g).argsort(dim=1)
    keep, masked = order[:, n_mask:].sort(dim=1).values, order[:, :n_mask].sort(dim=1).values
    return ImageBatch(images=torch.randn(b, 3, img, img, generator=g), patch_keep=keep, patch_masked=masked,
                      labels=torch.randint(0, 4, (b,), generator=g))


def text_batch(g: torch.Generator, b: int, vocab: int, max_len: int, ratio: float, pad: int = 0) -> TextBatch:
    lengths = torch.randint(3, max_len + 1, (b,), generator=g)
    full = torch.full((b, max_len), pad, dtype=torch.long)
    rows_vis, rows_pos, rows_mpos, rows_mid = [], [], [], []
    for i, n in enumerate(lengths.tolist()):
        ids = torch.randint(1, vocab, (n,), generator=g)
        full[i, :n] = ids
        n_mask = max(1, int(round(ratio * n))) if ratio > 0 else 0
        perm = torch.randperm(n, generator=g)
        mpos, vpos = perm[:n_mask].sort().values, perm[n_mask:].sort().values
        rows_vis.append(ids[vpos]); rows_pos.append(vpos); rows_mpos.append(mpos); rows_mid.append(ids[mpos])
    lv, m = max(len(r) for r in rows_vis), max(len(r) for r in rows_mpos)

    def pad_rows(rows, width, value):
        out = torch.full((b, width), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    valid = pad_rows([torch.ones(len(r), dtype=torch.long) for r in rows_mpos], m, 0).bool()
    vis_mask = pad_rows([torch.ones(len(r), dtype=torch.long) for r in rows_vis], lv, 0).bool()
    L = int(lengths.max())
    return TextBatch(input_ids=pad_rows(rows_vis, lv, pad), positions=pad_rows(rows_pos, lv, 0),
                     attention_mask=vis_mask, masked_positions=pad_rows(rows_mpos, m, 0),
                     masked_ids=pad_rows(rows_mid, m, pad), masked_valid=valid,
                     full_ids=full[:, :L], full_mask=torch.arange(L)[None, :] < lengths[:, None])


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
