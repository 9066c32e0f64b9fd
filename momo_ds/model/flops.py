"""Analytic FLOPs of MoMo's training step, from batch shapes alone (no run): what benchmarks report and what MFU
is computed from.

:class:`MomoFlops` counts matmuls only: 2 * in * out per token for every linear layer and 4 * L^2 * D per sequence
and attention layer (QK^T and AV). Norms, softmax, GELU, embedding lookups and the losses are left out (under 1 %
at Base size). A training step costs 3x the forward FLOPs of what carries gradient (one forward, two backward
matmuls), the convention of MAE's and PaLM's MFU accounting; the patch embedding, whose input needs no gradient,
costs 2x. Checked against torch's FlopCounterMode (math attention) in tests/test_benchmarks.py: within 1 % with
padded lengths, for every align mode and ITM setting.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from momo_ds.batch import ImageBatch, PairBatch, TextBatch
from momo_ds.config import ModelConfig


class MomoFlops:
    """Analytic forward matmul FLOPs of the parts of MoMo (see the module docstring for what is counted).

    ``lengths`` are per-row token counts [B]: real lengths give useful FLOPs, padded lengths executed FLOPs.
    """

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    @staticmethod
    def stack(lengths: Tensor, dim: int, hidden: int, depth: int) -> float:
        length = lengths.double()
        per_layer = 2 * length * (4 * dim * dim + 2 * dim * hidden) + 4 * length * length * dim
        return depth * float(per_layer.sum())

    def encoder(self, lengths: Tensor) -> float:
        c = self.cfg
        return self.stack(lengths, c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.depth)

    def patch_embed(self, n_images: int) -> float:
        """Every patch is embedded (the visible ones are gathered afterwards)."""
        c = self.cfg
        return 2.0 * n_images * c.num_patches * c.patch_size ** 2 * c.in_chans * c.embed_dim

    def decoder(self, enc_lengths: Tensor, masked_patches: Tensor, masked_text: Tensor) -> dict[str, float]:
        """enc_lengths: encoder tokens per row (CLS + visible); masked_patches / masked_text: slots per row."""
        c = self.cfg
        d = c.decoder_dim
        embed = 2.0 * float(enc_lengths.double().sum()) * c.embed_dim * d
        blocks = self.stack(enc_lengths + masked_patches + masked_text, d, int(d * c.mlp_ratio), c.decoder_depth)
        n_pix, n_txt = float(masked_patches.double().sum()), float(masked_text.double().sum())
        heads = 2.0 * n_pix * d * c.patch_size ** 2 * c.in_chans  # pixel head
        heads += 2.0 * n_txt * (d * c.embed_dim + c.embed_dim * c.vocab_size)  # text head + tied LM head
        return {"decoder": embed + blocks, "heads": heads}


def _rows(b: int, value: int) -> Tensor:
    return torch.full((b,), value, dtype=torch.long)


def _text_lengths(t: TextBatch, padded: bool) -> dict[str, Tensor]:
    b = t.batch_size
    if padded:
        return {"visible": _rows(b, t.input_ids.shape[1]), "masked": _rows(b, t.masked_ids.shape[1]),
                "full": _rows(b, t.full_ids.shape[1])}
    return {"visible": t.attention_mask.sum(1).cpu(), "masked": t.masked_valid.sum(1).cpu(),
            "full": t.full_mask.sum(1).cpu()}


def training_flops(cfg: ModelConfig, batch, objectives: dict[str, float], padded: bool = False,
                   align_inputs: Optional[str] = None) -> dict[str, float]:
    """Analytic training FLOPs (3x forward for what carries gradient) of
    ``MoMo.forward(batch, objectives, align_inputs=align_inputs)``.

    Parts: patch_embed, encoder, decoder, heads, total. ``padded``: count padded text (executed FLOPs) instead of
    real tokens (useful FLOPs). ITM's negative pairs (``cfg.itm_negatives`` per positive) are counted with the
    batch's own length distribution (their expected cost; the draw is random).
    """
    align = align_inputs or cfg.align_inputs
    f = MomoFlops(cfg)
    parts = {"patch_embed": 0.0, "encoder": 0.0, "decoder": 0.0, "heads": 0.0}

    def add(d: dict[str, float], mult: float = 3.0) -> None:
        for k, v in d.items():
            patch_mult = 2.0 if mult == 3.0 else mult  # the patch embedding's input needs no gradient: 2x, not 3x
            parts[k] += (patch_mult if k == "patch_embed" else mult) * v

    if isinstance(batch, ImageBatch):
        b, nk, nm = batch.batch_size, batch.patch_keep.shape[1], batch.patch_masked.shape[1]
        enc = _rows(b, 1 + nk)
        add({"patch_embed": f.patch_embed(b), "encoder": f.encoder(enc)})
        add(f.decoder(enc, _rows(b, nm), _rows(b, 0)))
    elif isinstance(batch, TextBatch):
        t = _text_lengths(batch, padded)
        enc = 1 + t["visible"]
        add({"encoder": f.encoder(enc)})
        add(f.decoder(enc, torch.zeros_like(enc), t["masked"]))
    elif isinstance(batch, PairBatch):
        im, t = batch.image, _text_lengths(batch.text, padded)
        b, n, nk, nm = im.batch_size, cfg.num_patches, im.patch_keep.shape[1], im.patch_masked.shape[1]
        if "cmm" in objectives:
            enc = 1 + nk + t["visible"]
            add({"patch_embed": f.patch_embed(b), "encoder": f.encoder(enc)})
            add(f.decoder(enc, _rows(b, nm), t["masked"]))
        if "itc" in objectives or "itm" in objectives:
            masked = align == "masked"
            n_img = n if align == "full" else nk
            if align == "masked_image" and batch.align_keep is not None:
                n_img = batch.align_keep.shape[1]
            txt = t["visible"] if masked else t["full"]
            mult = 3.0 if "itc" in objectives else 1.0
            add({"patch_embed": f.patch_embed(b), "encoder": f.encoder(_rows(b, 1 + n_img)) + f.encoder(1 + txt),
                 "heads": 2.0 * 2 * b * cfg.embed_dim * cfg.proj_dim}, mult)
            if "itm" in objectives:
                joint = 1 + n_img + txt
                # the positives, unless "masked" reuses their CMM encoding, and the negatives
                copies = cfg.itm_negatives + (0 if (masked and "cmm" in objectives) else 1)
                add({"patch_embed": copies * f.patch_embed(b), "encoder": copies * f.encoder(joint),
                     "heads": 2.0 * copies * b * cfg.embed_dim * 2})
    else:
        raise TypeError(type(batch).__name__)
    parts["total"] = sum(parts.values())
    return parts
