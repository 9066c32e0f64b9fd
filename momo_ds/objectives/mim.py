"""Masked image modelling: pixel MSE on the masked patches (MAE), optionally with per-patch normalised targets."""
from __future__ import annotations

import torch
from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """images: [B, C, H, W] -> [B, N, p*p*C]; patches row-major, pixels ordered (row, col, channel) as MAE."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """patches: [B, N, p*p*C] (square grid) -> images [B, C, H, W]; inverse of :func:`patchify`."""
    b, n, _ = patches.shape
    p, g = patch_size, int(round(n ** 0.5))
    x = patches.reshape(b, g, g, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, g * p, g * p)


def pixel_targets(images: Tensor, patch_idx: Tensor, patch_size: int, norm_pix: bool) -> Tensor:
    """Target pixels of the patches ``patch_idx`` [B, n] -> [B, n, p*p*C] float32.

    With ``norm_pix`` each patch is normalised by its own mean and (unbiased) variance, eps 1e-6, as MAE.
    """
    target = patchify(images.float(), patch_size)
    target = torch.gather(target, 1, patch_idx[..., None].expand(-1, -1, target.shape[-1]))
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target


def masked_pixel_loss(pred: Tensor, images: Tensor, patch_masked: Tensor, patch_size: int, norm_pix: bool) -> Tensor:
    """Mean squared error over the masked patches.

    pred: [B, Nm, p*p*C] predictions at ``patch_masked`` [B, Nm]; images: [B, C, H, W]
    -> 0-dim float32 (0 when nothing is masked)
    """
    target = pixel_targets(images, patch_masked, patch_size, norm_pix)
    sq = (pred.float() - target).pow(2)
    # every image masks the same number of patches, so this is MAE's mean of per-patch means
    return sq.sum() / max(sq.numel(), 1)


def mim_loss(pred: Tensor, images: Tensor, patch_masked: Tensor, patch_size: int,
             norm_pix: bool = True) -> dict[str, Tensor]:
    """{"mim_loss"}: see :func:`masked_pixel_loss`."""
    return {"mim_loss": masked_pixel_loss(pred, images, patch_masked, patch_size, norm_pix)}
