"""MoMo: one transformer encoder for images, text and image-text pairs, with per-objective decoders and heads.

Sequences are ``[CLS] + visible patches (+2-D sin-cos position, + image type)`` and/or
``visible text tokens (+learned position, + text type)``; masked patches and tokens never enter the encoder.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from momo_ds.batch import ImageBatch, JointInputs, PairBatch, TextBatch
from momo_ds.config import ModelConfig
from momo_ds.model import export as _export
from momo_ds.model.decoders import Decoder, build_decoders
from momo_ds.model.embeddings import ImageEmbed, TextEmbed, Token
from momo_ds.model.encoder import Encoder
from momo_ds.model.heads import ContrastiveHead, TiedLMHead, init_logit_scale
from momo_ds.model.validate import check_image_inputs, check_joint, check_same_batch, check_text, check_text_batch


class MoMo(nn.Module):
    """The MoMo model. Build it with :func:`momo_ds.model.build_model`."""

    #: Run value checks (ids in vocabulary, indices in range, no empty text) in ``forward`` on accelerator
    #: tensors too. Off by default: each check is a host sync. CPU tensors are always checked (no sync cost).
    check_values: bool = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # one [CLS] shared by every modality
        self.image_embed = ImageEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, dim)
        self.text_embed = TextEmbed(cfg.vocab_size, cfg.max_text_len, dim, cfg.pad_token_id)
        self.type_embed = nn.Embedding(2, dim)  # 0 = image, 1 = text
        self.register_buffer("type_ids", torch.arange(2), persistent=False)
        self.encoder = Encoder(dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.ln_eps, cfg.attn_backend,
                               cfg.grad_checkpointing)
        self.decoders = build_decoders(cfg)
        has_text_decoder = any(getattr(d, "has_text", False) for d in self.decoders.values())
        self.lm_head = TiedLMHead(self.text_embed.token_embed) if has_text_decoder else None
        self.image_proj = ContrastiveHead(dim, cfg.proj_dim)
        self.text_proj = ContrastiveHead(dim, cfg.proj_dim)
        self.logit_scale = init_logit_scale(cfg.init_temperature)
        self.itm_head = nn.Linear(dim, 2)
        self.init_weights()

    # ------------------------------------------------------------------------------------------------ set-up
    @torch.no_grad()
    def init_weights(self) -> None:
        """MAE/BERT-style initialisation: xavier-uniform linears (and patch projection), N(0, 0.02) tokens and
        embeddings, unit LayerNorms, log(1/T) logit scale."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, Token):
                nn.init.normal_(m.weight, std=0.02)
            elif hasattr(m, "normalized_shape") and getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.image_embed.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        self.logit_scale.fill_(math.log(1.0 / self.cfg.init_temperature))
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.bias)

    def tie_weights(self) -> None:
        """Make the LM head's weight the token embedding again (after loading a checkpoint that untied them)."""
        if self.lm_head is not None:
            self.lm_head.tie(self.text_embed.token_embed)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every attention layer's kernel (weights unchanged)."""
        from momo_ds.model.attention import Attention, check_backend
        check_backend(backend)
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay (besides biases and norms)."""
        names = {"cls_token", "logit_scale", "type_embed.weight", "text_embed.pos_embed.weight"}
        names |= {n for n, _ in self.named_parameters() if n.endswith(("mask_token.weight", "text_pos.weight",
                                                                         "decoders.cmm.type_embed.weight",
                                                                         "decoders.shared.type_embed.weight"))}
        return names

    def export_state_dict(self, heads: bool = True) -> dict[str, Tensor]:
        """Encoder-only weights for downstream use and the next stage (see :mod:`momo_ds.model.export`)."""
        return _export.export_state_dict(self, heads)

    def load_exported(self, state: dict[str, Tensor], heads: bool = True) -> None:
        """Load :meth:`export_state_dict` output; decoders keep their values, and so does the ITM head when the
        export has none (exports written before the head was exported)."""
        _export.load_exported(self, state, heads)

    # --------------------------------------------------------------------------------------------- the network
    def decoder(self, name: str) -> Decoder:
        """The decoder an objective's ``name`` (mim | mlm | cmm) runs: its own, or the shared one."""
        if name not in self.cfg.decoders:
            raise ValueError(f"objective {name!r} needs the {name!r} decoder, but this model was built "
                             f"with decoders={self.cfg.decoders}")
        return self.decoders["shared" if self.cfg.shared_decoder else name]

    def forward_features(self, images: Optional[Tensor] = None, patch_keep: Optional[Tensor] = None,
                         ids: Optional[Tensor] = None, positions: Optional[Tensor] = None,
                         text_mask: Optional[Tensor] = None,
                         image_embeds: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Unchecked encoder pass over [CLS, visible patches, visible text] (either modality may be absent).

        images: [B, C, H, W] with patch_keep [B, Nk] (None: every patch); ids / positions / text_mask: [B, L];
        image_embeds: [B, Ni, D] patch embeddings (positions included) used instead of embedding ``images``
        (e.g. BEiT-style [MASK] patches)
        -> (h [B, 1 + Nk + L, D] after the final norm, key_mask [B, 1 + Nk + L] bool or None without text)
        """
        if images is not None and image_embeds is None:
            image_embeds = self.image_embed(images, patch_keep)
        b = (image_embeds if image_embeds is not None else ids).shape[0]
        types = self.type_embed(self.type_ids)  # [2, D]
        parts = [self.cls_token.expand(b, -1, -1)]
        if image_embeds is not None:
            parts.append(image_embeds + types[0])
        if ids is not None:
            parts.append(self.text_embed(ids, positions) + types[1])
        x = torch.cat([p.to(parts[0].dtype) for p in parts], dim=1)
        key_mask = None
        if text_mask is not None:
            prefix = torch.ones(b, x.shape[1] - text_mask.shape[1], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([prefix, text_mask], dim=1)
        return self.encoder(x, key_mask), key_mask

    def match_state(self, h: Tensor, key_mask: Tensor) -> Tensor:
        """Joint encoding h [n, L, D] with key_mask [n, L] -> the state the ITM head reads [n, D]: [CLS]
        (``itm_readout="cls"``) or the mean over [CLS], patches and real text tokens (``"mean"``)."""
        if self.cfg.itm_readout == "cls":
            return h[:, 0]
        weights = key_mask.to(h.dtype)[..., None]
        return (h * weights).sum(dim=1) / weights.sum(dim=1)

    #: what ``forward`` computes: output name -> the inputs it reads
    OUTPUTS = {"mim": ImageBatch, "mlm": TextBatch, "cmm": PairBatch, "embed": JointInputs, "match": JointInputs}

    def forward(self, inputs, output: str) -> dict[str, Tensor]:
        """The predictions one objective family reads, checked inputs in, no losses out.

        output "mim",   inputs ImageBatch -> {"pixels": [B, Nm, p*p*C]} (the MIM decoder at the masked patches)
        output "mlm",   inputs TextBatch  -> {"token_logits": [B, M, vocab]} (the MLM decoder at the masked tokens)
        output "cmm",   inputs PairBatch  -> {"pixels", "token_logits"} of the CMM decoder, and the joint encoding
                                              it read: "features" [B, 1 + Nk + Lv, D], "key_mask" [B, 1 + Nk + Lv]
        output "embed", inputs JointInputs -> {"image_emb", "text_emb"}: [B, proj_dim] float32 L2-normalised
                                              contrastive embeddings of the two single-modality encodings
        output "match", inputs JointInputs -> {"match_state": [B, D]} of the joint encoding (ITM head input)
        Every output also holds "logit_scale" (the [1] log contrastive scale), read where it is owned (ZeRO-3
        gathers a module's own parameters inside its forward only).
        """
        want = self.OUTPUTS.get(output)
        if want is None:
            raise ValueError(f"output {output!r}: expected one of {', '.join(self.OUTPUTS)}")
        if not isinstance(inputs, want):
            raise TypeError(f"output {output!r} reads a {want.__name__}, got {type(inputs).__name__}")
        out = getattr(self, "_forward_" + output)(inputs)
        out["logit_scale"] = self.logit_scale
        return out

    def _forward_mim(self, b: ImageBatch) -> dict[str, Tensor]:
        check_image_inputs(b.images, b.patch_keep, self.cfg, self._values(b.images), b.patch_masked)
        h, _ = self.forward_features(b.images, b.patch_keep)
        pixels, _ = self.decoder("mim")(h, None, patch_keep=b.patch_keep, patch_masked=b.patch_masked)
        return {"pixels": pixels}

    def _forward_mlm(self, t: TextBatch) -> dict[str, Tensor]:
        check_text_batch(t, self.cfg, self._values(t.input_ids))
        h, key_mask = self.forward_features(ids=t.input_ids, positions=t.positions, text_mask=t.attention_mask)
        _, states = self.decoder("mlm")(h, key_mask, text_positions=t.positions, masked_positions=t.masked_positions,
                                        masked_valid=t.masked_valid)
        return {"token_logits": self.lm_head(states)}

    def _forward_cmm(self, p: PairBatch) -> dict[str, Tensor]:
        im, tx = p.image, p.text
        check_image_inputs(im.images, im.patch_keep, self.cfg, self._values(im.images), im.patch_masked)
        check_text_batch(tx, self.cfg, self._values(tx.input_ids))
        check_same_batch(im.images.shape[0], tx.input_ids.shape[0])
        h, key_mask = self.forward_features(im.images, im.patch_keep, tx.input_ids, tx.positions, tx.attention_mask)
        pixels, states = self.decoder("cmm")(h, key_mask, im.patch_keep, im.patch_masked, tx.positions,
                                             tx.masked_positions, tx.masked_valid)
        return {"pixels": pixels, "token_logits": self.lm_head(states), "features": h, "key_mask": key_mask}

    def _forward_embed(self, j: JointInputs) -> dict[str, Tensor]:
        check_joint(j, self.cfg, self._values(j.ids))
        image_emb = self.image_proj(self.forward_features(j.images, j.patch_keep)[0][:, 0])
        text_emb = self.text_proj(self.forward_features(ids=j.ids, positions=j.positions, text_mask=j.mask)[0][:, 0])
        return {"image_emb": image_emb, "text_emb": text_emb}

    def _forward_match(self, j: JointInputs) -> dict[str, Tensor]:
        check_joint(j, self.cfg, self._values(j.ids))
        return {"match_state": self.match_state(*self.forward_features(j.images, j.patch_keep, j.ids, j.positions,
                                                                       j.mask))}

    def _values(self, t: Tensor) -> bool:
        return self.check_values or t.device.type == "cpu"

    # ------------------------------------------------------------------------------- encodings for downstream use
    def encode_image(self, images: Tensor, patch_keep: Optional[Tensor] = None) -> Tensor:
        """images: [B, C, H, W]; patch_keep: [B, Nk] visible patch indices or None (all) -> [B, 1 + Nk, D]."""
        check_image_inputs(images, patch_keep, self.cfg, values=True)
        return self.forward_features(images, patch_keep)[0]

    def encode_text(self, ids: Tensor, positions: Optional[Tensor] = None,
                    attention_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """ids, positions: [B, L] (positions default 0..L-1); attention_mask: [B, L] bool (default all real)
        -> (h [B, 1 + L, D], key_mask [B, 1 + L] with True on [CLS] and real tokens)."""
        positions, attention_mask = text_defaults(ids, positions, attention_mask)
        check_text(ids, positions, attention_mask, self.cfg, values=True)
        return self.forward_features(ids=ids, positions=positions, text_mask=attention_mask)

    def encode_pair(self, images: Tensor, ids: Tensor, positions: Optional[Tensor] = None,
                    attention_mask: Optional[Tensor] = None,
                    patch_keep: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Joint sequence [CLS, visible patches, visible text].

        images: [B, C, H, W]; ids/positions/attention_mask: [B, L]; patch_keep: [B, Nk] or None (all patches)
        -> (h [B, 1 + Nk + L, D], key_mask [B, 1 + Nk + L])
        """
        positions, attention_mask = text_defaults(ids, positions, attention_mask)
        check_image_inputs(images, patch_keep, self.cfg, values=True)
        check_text(ids, positions, attention_mask, self.cfg, values=True)
        check_same_batch(images.shape[0], ids.shape[0])
        return self.forward_features(images, patch_keep, ids, positions, attention_mask)

    def cls_features(self, images: Tensor) -> Tensor:
        """images: [B, C, H, W] -> final-norm [CLS] state [B, D] of the unmasked image (linear probes)."""
        return self.encode_image(images)[:, 0]

    def image_features(self, images: Tensor) -> Tensor:
        """images: [B, C, H, W] -> L2-normalised contrastive embedding [B, proj_dim] (unmasked, float32)."""
        return self.image_proj(self.cls_features(images))

    def text_features(self, ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """ids: [B, L] right-padded full text, attention_mask: [B, L] bool -> [B, proj_dim] (float32)."""
        return self.text_proj(self.encode_text(ids, None, attention_mask)[0][:, 0])

    def match_logits(self, images: Tensor, ids: Tensor, attention_mask: Optional[Tensor] = None,
                     patch_keep: Optional[Tensor] = None) -> Tensor:
        """ITM logits of each (image, text) pair, through the joint state and head training uses (held-out ITM).

        images: [B, C, H, W]; ids: [B, L] right-padded text, attention_mask: [B, L] bool (default all real);
        patch_keep: [B, Nk] visible patches or None (all) -> [B, 2] float32 (class 1 = match, as trained)
        """
        h, key_mask = self.encode_pair(images, ids, None, attention_mask, patch_keep)
        return self.itm_head(self.match_state(h, key_mask)).float()


def text_defaults(ids: Tensor, positions: Optional[Tensor], mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Positions 0..L-1 (0 on padding) and an all-real mask where not given."""
    if mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    if positions is None:
        positions = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
        positions = torch.where(mask, positions, torch.zeros_like(positions))
    return positions, mask
