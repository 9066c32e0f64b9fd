"""Shallow MAE-style decoders: per objective (MIM pixels, MLM tokens, CMM both) or one shared trunk.

A decoder embeds the encoder output (CLS + visible tokens) to ``decoder_dim``, appends one learned [MASK] token
per masked patch / masked text token, adds decoder positions (2-D sin-cos for patches, learned for text, plus a
type embedding when it decodes both modalities), runs ``decoder_depth`` blocks and a norm, and predicts only at
the masked slots. Appending the mask tokens instead of un-shuffling them into the original order (MAE) computes
the same function: the blocks are permutation-equivariant and every token carries its own position. It also
avoids a scatter and works unchanged for variable-length text (invalid masked slots are key-masked).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from momo_ds.config import ModelConfig
from momo_ds.model.embeddings import Token, sincos_2d
from momo_ds.model.encoder import Block, run_blocks
from momo_ds.model.norm import layer_norm
from momo_ds.objectives.registry import OBJECTIVES


class Decoder(nn.Module):
    """Decoder for images (``image=True``), text (``text=True``) or both (joint / shared)."""

    def __init__(self, cfg: ModelConfig, image: bool, text: bool):
        super().__init__()
        dim = cfg.decoder_dim
        self.has_image, self.has_text = image, text
        self.grad_checkpointing = cfg.grad_checkpointing
        self.embed = nn.Linear(cfg.embed_dim, dim)
        self.mask_token = Token(dim)
        if image:
            self.register_buffer("image_pos", sincos_2d(cfg.img_size // cfg.patch_size, dim)[None], persistent=False)
            self.pixel_head = nn.Linear(dim, cfg.patch_size ** 2 * cfg.in_chans)
        if text:
            self.text_pos = nn.Embedding(cfg.max_text_len, dim)
            self.text_head = nn.Linear(dim, cfg.embed_dim)  # into the token-embedding space of the tied LM head
        if image and text:
            self.type_embed = nn.Embedding(2, dim)
            self.register_buffer("type_ids", torch.arange(2), persistent=False)
        self.blocks = nn.ModuleList([Block(dim, cfg.decoder_heads, cfg.mlp_ratio, cfg.ln_eps, cfg.attn_backend)
                                     for _ in range(cfg.decoder_depth)])
        self.norm = layer_norm(dim, cfg.ln_eps)

    def part_modules(self, image: bool, text: bool) -> list[nn.Module]:
        """Modules a call decoding ``image``/``text`` runs (for the zero-gradient touch of the others)."""
        mods: list[nn.Module] = [self.embed, self.mask_token, self.blocks, self.norm]
        if self.has_image and self.has_text:
            mods.append(self.type_embed)
        if image:
            mods.append(self.pixel_head)
        if text:
            mods += [self.text_pos, self.text_head]
        return mods

    def forward(self, h: Tensor, key_mask: Optional[Tensor], patch_keep: Optional[Tensor] = None,
                patch_masked: Optional[Tensor] = None, text_positions: Optional[Tensor] = None,
                masked_positions: Optional[Tensor] = None,
                masked_valid: Optional[Tensor] = None) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Reconstruct the masked patches and/or tokens.

        h:                [B, 1 + Nk + Lv, D] encoder output laid out as [CLS, visible patches, visible text]
        key_mask:         [B, 1 + Nk + Lv] bool (True = real) or None when nothing is padded
        patch_keep:       [B, Nk], patch_masked: [B, Nm]  (image part, or None)
        text_positions:   [B, Lv], masked_positions / masked_valid: [B, M]  (text part, or None)
        returns           pixels [B, Nm, p*p*C] or None, text states [B, M, D] (for the LM head) or None
        """
        image, text = patch_keep is not None, text_positions is not None
        if (image and not self.has_image) or (text and not self.has_text):
            raise ValueError(f"this decoder handles image={self.has_image}, text={self.has_text}; "
                             f"got image={image}, text={text}")
        x = self.embed(h)
        b, length, dim = x.shape
        types = self.type_embed(self.type_ids) if self.has_image and self.has_text else x.new_zeros(2, dim)
        mask_token = self.mask_token()
        vis_pos, masked, masks = [x.new_zeros(b, 1, dim)], [], []
        if image:
            pos = self.image_pos[0]
            vis_pos.append(pos[patch_keep] + types[0])
            masked.append(mask_token + pos[patch_masked] + types[0])
            masks.append(torch.ones_like(patch_masked, dtype=torch.bool))
        if text:
            vis_pos.append(self.text_pos(text_positions) + types[1])
            masked.append(mask_token + self.text_pos(masked_positions) + types[1])
            masks.append(masked_valid)
        x = x + torch.cat(vis_pos, dim=1)
        seq = torch.cat([x] + [m.to(x.dtype) for m in masked], dim=1)
        full_mask = None
        if key_mask is not None or text:
            enc_mask = key_mask if key_mask is not None else torch.ones(b, length, dtype=torch.bool, device=x.device)
            full_mask = torch.cat([enc_mask] + masks, dim=1)
        seq = self.norm(run_blocks(self.blocks, seq, full_mask, self.grad_checkpointing))
        pixels = texts = None
        start = length
        if image:
            n_masked = patch_masked.shape[1]
            pixels = self.pixel_head(seq[:, start:start + n_masked])
            start += n_masked
        if text:
            texts = self.text_head(seq[:, start:])
        return pixels, texts


def build_decoders(cfg: ModelConfig) -> nn.ModuleDict:
    """The decoders listed in ``cfg.decoders`` (the registry's: mim, mlm, cmm), or one ``shared`` trunk for all."""
    if not cfg.decoders:
        return nn.ModuleDict()
    if cfg.shared_decoder:
        return nn.ModuleDict({"shared": Decoder(cfg, image=True, text=True)})
    return nn.ModuleDict({o.decoder: Decoder(cfg, o.image, o.text) for o in OBJECTIVES.values()
                          if o.decoder in cfg.decoders})
