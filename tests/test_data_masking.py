"""Mask drawing: exact counts, sorted disjoint index sets, vectorised compaction against a naive loop."""
from __future__ import annotations

import torch

from momo_ds.data.collate import collate_texts
from momo_ds.data.masking import (compact, draw_patch_masks, draw_text_masks, num_masked_patches,
                                  num_masked_tokens)


def test_patch_mask_counts_and_coverage():
    assert num_masked_patches(196, 0.75) == 147 and num_masked_patches(64, 0.75) == 48
    assert num_masked_patches(4, 0.9) == 3, "at least one patch stays visible"
    assert num_masked_patches(10, 0.25) == 3, "round half up"
    assert num_masked_patches(16, 0.0) == 0
    g = torch.Generator().manual_seed(0)
    keep, masked = draw_patch_masks(64, 49, 0.75, g)
    assert keep.shape == (64, 12) and masked.shape == (64, 37)
    assert torch.equal(torch.cat([keep, masked], 1).sort(1).values, torch.arange(49).expand(64, -1))
    assert torch.equal(keep, keep.sort(1).values) and torch.equal(masked, masked.sort(1).values)
    assert len({tuple(r) for r in keep.tolist()}) > 60, "masks differ per image"
    keep0, masked0 = draw_patch_masks(3, 16, 0.0, g)
    assert torch.equal(keep0, torch.arange(16).expand(3, -1)) and masked0.shape == (3, 0)


def test_patch_masks_are_uniform():
    g = torch.Generator().manual_seed(1)
    _, masked = draw_patch_masks(4000, 16, 0.5, g)
    freq = torch.bincount(masked.flatten(), minlength=16).float() / 4000
    assert torch.allclose(freq, torch.full((16,), 0.5), atol=0.04)


def test_text_mask_counts():
    lengths = torch.tensor([1, 2, 3, 7, 10, 40])
    assert num_masked_tokens(lengths, 0.15).tolist() == [0, 1, 1, 1, 2, 6]
    assert num_masked_tokens(lengths, 0.75).tolist() == [0, 1, 2, 5, 8, 30]
    assert num_masked_tokens(lengths, 0.0).tolist() == [0] * 6
    g = torch.Generator().manual_seed(0)
    m = draw_text_masks(lengths, 0.75, g)
    assert m.shape == (6, 40) and torch.equal(m.sum(1), num_masked_tokens(lengths, 0.75))
    assert not (m & (torch.arange(40) >= lengths[:, None])).any(), "never masks padding"


def test_compact_matches_naive_loop():
    g = torch.Generator().manual_seed(2)
    sel = torch.rand(9, 13, generator=g) < 0.4
    sel[3] = False
    pos, valid = compact(sel)
    for i in range(9):
        want = torch.nonzero(sel[i]).flatten().tolist()
        assert pos[i][valid[i]].tolist() == want
        assert (pos[i][~valid[i]] == 0).all()
    assert pos.shape[1] == int(sel.sum(1).max())


def test_collate_texts_small():
    g = torch.Generator().manual_seed(0)
    t = collate_texts([[5, 6, 7, 8], [9]], pad_id=0, mask_ratio=0.5, generator=g)
    assert t.full_ids.tolist() == [[5, 6, 7, 8], [9, 0, 0, 0]]
    assert t.masked_valid.sum(1).tolist() == [2, 0] and t.attention_mask.sum(1).tolist() == [2, 1]
    assert t.input_ids[1].tolist() == [9, 0] and t.positions[1].tolist() == [0, 0]
