"""Mask drawing (on loader workers, per batch, vectorised).

Image patches: every image of a batch masks exactly ``Nm = min(N - 1, floor(ratio * N + 0.5))`` of its N patches
(round half up, at least one patch kept); ratio 0 keeps all patches. Patches are ranked by uniform noise
(MAE's argsort trick), split, and each index set is sorted ascending.

Text tokens: a text of length n masks exactly ``m = floor(ratio * n + 0.5)`` tokens, clamped to [1, n - 1] when
ratio > 0 and n >= 2 (at least one masked and one visible), and m = 0 for n = 1 or ratio 0. Masked tokens are
removed from the encoder input (MAE-style), so there is no BERT 80/10/10 replacement.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def check_mask_ratio(ratio: float, name: str = "mask_ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name}={ratio} is outside [0, 1)")


def num_masked_patches(num_patches: int, ratio: float) -> int:
    check_mask_ratio(ratio)
    if ratio <= 0:
        return 0
    return min(num_patches - 1, int(ratio * num_patches + 0.5))


def draw_patch_masks(batch_size: int, num_patches: int, ratio: float,
                     generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Returns (patch_keep [B, Nk], patch_masked [B, Nm]) int64, each row sorted ascending."""
    nm = num_masked_patches(num_patches, ratio)
    nk = num_patches - nm
    if nm == 0:
        keep = torch.arange(num_patches, dtype=torch.long).expand(batch_size, -1).contiguous()
        return keep, torch.zeros(batch_size, 0, dtype=torch.long)
    order = torch.rand(batch_size, num_patches, generator=generator).argsort(dim=1)
    keep = order[:, :nk].sort(dim=1).values
    masked = order[:, nk:].sort(dim=1).values
    return keep, masked


def num_masked_tokens(lengths: Tensor, ratio: float) -> Tensor:
    """lengths [B] int64 → masked-token counts [B] int64 (rule in the module docstring)."""
    check_mask_ratio(ratio)
    if ratio <= 0:
        return torch.zeros_like(lengths)
    m = torch.floor(lengths.to(torch.float64) * ratio + 0.5).to(torch.long)
    m = torch.maximum(m, torch.ones_like(m))
    m = torch.minimum(m, lengths - 1)
    return m.clamp_(min=0)


def draw_text_masks(lengths: Tensor, ratio: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """lengths [B] → masked [B, L] bool (L = max length); exactly num_masked_tokens(lengths) True per row."""
    b = lengths.shape[0]
    width = int(lengths.max()) if b else 0
    m = num_masked_tokens(lengths, ratio)
    if ratio <= 0 or width == 0:
        return torch.zeros(b, width, dtype=torch.bool)
    noise = torch.rand(b, width, generator=generator)
    pos = torch.arange(width).expand(b, -1)
    noise = torch.where(pos < lengths[:, None], noise, torch.full_like(noise, 2.0))  # padding ranks last
    rank = noise.argsort(dim=1).argsort(dim=1)
    return rank < m[:, None]


def compact(select: Tensor) -> tuple[Tensor, Tensor]:
    """select [B, L] bool → (positions [B, K] int64 ascending, valid [B, K] bool), K = max row count.

    Invalid slots hold position 0.
    """
    b, width = select.shape
    counts = select.sum(dim=1)
    k = int(counts.max()) if b else 0
    pos = torch.arange(width).expand(b, -1)
    key = torch.where(select, pos, pos + width)  # selected positions first, in order
    order = key.argsort(dim=1)[:, :k]
    valid = torch.arange(k).expand(b, -1) < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid
