"""Input embeddings: patches (+ fixed 2-D sin-cos positions), text tokens (+ learned positions), learned tokens.

The [CLS] token and the modality type embeddings are owned by :class:`momo_ds.model.momo.MoMo`.
"""
from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor, nn


def sincos_2d(grid_size: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position table of MAE: [grid_size**2, dim], row-major patches.

    Layout (as MAE's ``get_2d_sincos_pos_embed``, so MAE checkpoints see the positions they were trained with):
    [sin(col*w), cos(col*w), sin(row*w), cos(row*w)], w_k = 10000^(-k / (dim/4)). timm's builder emits the row
    half first, hence the swap.
    """
    emb = build_sincos2d_pos_embed([grid_size, grid_size], dim, interleave_sin_cos=True)
    half = dim // 2
    return torch.cat([emb[:, half:], emb[:, :half]], dim=1)


class Token(nn.Module):
    """A learned vector (a [MASK] token) held in a leaf module so every parameter has a callable owner.

    forward() -> weight: [1, 1, D]
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self) -> Tensor:
        return self.weight


class PatchEmbed(nn.Module):
    """images: [B, C, H, W] -> [B, N, D] (non-overlapping patches, row-major). Named like timm (``proj``)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)


class ImageEmbed(nn.Module):
    """Patch embedding plus fixed sin-cos positions, then the visible patches only.

    images: [B, C, H, W], patch_keep: [B, Nk] sorted patch indices or None (all) -> [B, Nk, D]
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.grid_size = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        # Non-persistent: a function of the config, recomputed at build time and folded in at export.
        self.register_buffer("pos_embed", sincos_2d(self.grid_size, dim)[None], persistent=False)

    def forward(self, images: Tensor, patch_keep: Tensor | None = None) -> Tensor:
        x = self.patch_embed(images) + self.pos_embed.to(dtype=self.patch_embed.proj.weight.dtype)
        if patch_keep is None:
            return x
        return torch.gather(x, 1, patch_keep[..., None].expand(-1, -1, x.shape[-1]))


class TextEmbed(nn.Module):
    """Token embedding (the tied LM output weight) plus learned 1-D positions.

    ids: [B, L] token ids, positions: [B, L] original positions -> [B, L, D]
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int, pad_id: int):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos_embed = nn.Embedding(max_len, dim)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        return self.token_embed(ids) + self.pos_embed(positions)
