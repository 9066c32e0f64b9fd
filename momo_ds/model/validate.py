"""Input checks raising one-line ValueErrors that name what is wrong.

Shape checks are free and always run. Value checks (ids in the vocabulary, indices in range, no empty text)
read tensor contents: one host sync per call, so the training forward runs them only on CPU tensors or when
``MoMo.check_values`` is set; the public encode API always runs them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from momo_ds.batch import JointInputs, TextBatch
from momo_ds.config import ModelConfig


def _raise_first(checks: list[tuple[Tensor, str]]) -> None:
    """checks: (0-dim bool 'is wrong', message); one host sync for all of them."""
    if not checks:
        return
    flags = torch.stack([c for c, _ in checks]).tolist()
    for bad, (_, msg) in zip(flags, checks):
        if bad:
            raise ValueError(msg)


def check_images(images: Tensor, cfg: ModelConfig) -> None:
    """images: [B, C, H, W] floating, C == in_chans, H == W == img_size."""
    want = f"[B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}]"
    if images.ndim != 4:
        raise ValueError(f"images: expected shape {want}, got {tuple(images.shape)}")
    if images.shape[1] != cfg.in_chans:
        raise ValueError(f"images: expected {cfg.in_chans} channels, got {images.shape[1]} "
                         f"(shape {tuple(images.shape)}, want {want})")
    if tuple(images.shape[2:]) != (cfg.img_size, cfg.img_size):
        raise ValueError(f"images: expected image size {cfg.img_size}x{cfg.img_size}, "
                         f"got {images.shape[2]}x{images.shape[3]} (shape {tuple(images.shape)})")
    if not images.is_floating_point():
        raise ValueError(f"images: expected a floating-point tensor, got {images.dtype}")


def check_patch_indices(idx: Tensor, name: str, batch: int, num_patches: int, values: bool) -> None:
    """idx: [B, n] int64 patch indices in [0, num_patches)."""
    if idx.ndim != 2 or idx.shape[0] != batch:
        raise ValueError(f"{name}: expected shape [{batch}, n], got {tuple(idx.shape)}")
    if idx.dtype != torch.long:
        raise ValueError(f"{name}: expected int64 patch indices, got {idx.dtype}")
    if idx.shape[1] > num_patches:
        raise ValueError(f"{name}: {idx.shape[1]} indices per image but the image has {num_patches} patches")
    if values and idx.numel():
        _raise_first([((idx < 0).any() | (idx >= num_patches).any(),
                       f"{name}: patch indices out of range [0, {num_patches})")])


def check_text(ids: Tensor, positions: Tensor, mask: Tensor, cfg: ModelConfig, values: bool,
               name: str = "input_ids") -> None:
    """ids, positions: [B, L] int64; mask: [B, L] bool with at least one True per row."""
    if ids.ndim != 2:
        raise ValueError(f"{name}: expected shape [B, L], got {tuple(ids.shape)}")
    if ids.dtype != torch.long or positions.dtype != torch.long:
        raise ValueError(f"{name}/positions: expected int64, got {ids.dtype}/{positions.dtype}")
    if positions.shape != ids.shape or mask.shape != ids.shape:
        raise ValueError(f"{name}: ids {tuple(ids.shape)}, positions {tuple(positions.shape)} and attention mask "
                         f"{tuple(mask.shape)} must have the same shape")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: attention mask must be bool (True = real token), got {mask.dtype}")
    if ids.shape[1] > cfg.max_text_len:
        raise ValueError(f"{name}: text length {ids.shape[1]} exceeds max_text_len={cfg.max_text_len}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name}: empty text (length 0); every text needs at least one visible token")
    if values:
        _raise_first([
            ((~mask.any(dim=1)).any(), f"{name}: empty text (a row has no real token in its attention mask)"),
            (((ids < 0) | (ids >= cfg.vocab_size)).any(),
             f"{name}: token ids outside the vocabulary [0, {cfg.vocab_size})"),
            (((positions < 0) | (positions >= cfg.max_text_len)).any(),
             f"{name}: text positions outside [0, max_text_len={cfg.max_text_len})"),
        ])


def check_masked_text(positions: Tensor, ids: Tensor, valid: Tensor, batch: int, cfg: ModelConfig,
                      values: bool) -> None:
    """masked_positions, masked_ids: [B, M] int64; masked_valid: [B, M] bool."""
    if positions.ndim != 2 or positions.shape[0] != batch or ids.shape != positions.shape or valid.shape != ids.shape:
        raise ValueError(f"masked_positions/masked_ids/masked_valid: expected matching [{batch}, M] shapes, got "
                         f"{tuple(positions.shape)}/{tuple(ids.shape)}/{tuple(valid.shape)}")
    if values and ids.numel():
        _raise_first([
            (((ids < 0) | (ids >= cfg.vocab_size)).any(),
             f"masked_ids: token ids outside the vocabulary [0, {cfg.vocab_size})"),
            (((positions < 0) | (positions >= cfg.max_text_len)).any(),
             f"masked_positions: positions outside [0, max_text_len={cfg.max_text_len})"),
        ])


def check_same_batch(*sizes: Optional[int]) -> None:
    real = [s for s in sizes if s is not None]
    if len(set(real)) > 1:
        raise ValueError(f"batch sizes of the inputs differ: {real}")


def check_image_inputs(images: Tensor, patch_keep: Optional[Tensor], cfg: ModelConfig, values: bool,
                       patch_masked: Optional[Tensor] = None) -> None:
    """images [B, C, H, W] and the patch index sets given with them."""
    check_images(images, cfg)
    for idx, name in ((patch_keep, "patch_keep"), (patch_masked, "patch_masked")):
        if idx is not None:
            check_patch_indices(idx, name, images.shape[0], cfg.num_patches, values)


def check_text_batch(t: TextBatch, cfg: ModelConfig, values: bool) -> None:
    check_text(t.input_ids, t.positions, t.attention_mask, cfg, values)
    check_masked_text(t.masked_positions, t.masked_ids, t.masked_valid, t.input_ids.shape[0], cfg, values)


def check_joint(j: JointInputs, cfg: ModelConfig, values: bool) -> None:
    """Pairs as contrastive and ITM see them."""
    check_image_inputs(j.images, j.patch_keep, cfg, values)
    check_text(j.ids, j.positions, j.mask, cfg, values, name="ids")
    check_same_batch(j.images.shape[0], j.ids.shape[0])
