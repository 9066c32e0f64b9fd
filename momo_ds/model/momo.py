"""MoMo: one transformer encoder for images, text and image-text pairs, with per-objective decoders and heads.

Sequences are ``[CLS] + visible patches (+2-D sin-cos position, + image type)`` and/or
``visible text tokens (+learned position, + text type)``; masked patches and tokens never enter the encoder.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor, nn

from momo_ds.batch import ImageBatch, PairBatch, TextBatch, batch_kind
from momo_ds.config import ModelConfig
from momo_ds.model import export as _export
from momo_ds.model.decoders import Decoder, build_decoders
from momo_ds.model.embeddings import ImageEmbed, TextEmbed, Token
from momo_ds.model.encoder import Encoder
from momo_ds.model.heads import ContrastiveHead, TiedLMHead, init_logit_scale
from momo_ds.model.touch import zero_touch
from momo_ds.model.validate import check_images, check_masked_text, check_patch_indices, check_same_batch, check_text
from momo_ds.objectives import (OBJECTIVES, JointInputs, cmm_loss, contrastive_loss, itm_loss, mim_loss, mlm_loss,
                                objectives_for)
from momo_ds.objectives.dist import LOCAL, DistContext



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

    # -------------------------------------------------------------------------------------------- encoding
    def _decoder(self, objective: str) -> Decoder:
        if objective not in self.cfg.decoders:
            raise ValueError(f"objective {objective!r} needs the {objective!r} decoder, but this model was built "
                             f"with decoders={self.cfg.decoders}")
        return self.decoders["shared" if self.cfg.shared_decoder else objective]

    def _encode(self, images: Optional[Tensor] = None, patch_keep: Optional[Tensor] = None,
                ids: Optional[Tensor] = None, positions: Optional[Tensor] = None,
                text_mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Unchecked encoder pass over [CLS, visible patches, visible text]. -> (h [B, L, D], key_mask [B, L])."""
        b = (images if images is not None else ids).shape[0]
        types = self.type_embed(self.type_ids)  # [2, D]
        parts = [self.cls_token.expand(b, -1, -1)]
        if images is not None:
            parts.append(self.image_embed(images, patch_keep) + types[0])
        if ids is not None:
            parts.append(self.text_embed(ids, positions) + types[1])
        x = torch.cat([p.to(parts[0].dtype) for p in parts], dim=1)
        key_mask = None
        if ids is not None:
            prefix = torch.ones(b, x.shape[1] - ids.shape[1], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([prefix, text_mask], dim=1)
        return self.encoder(x, key_mask), key_mask

    def _check_image_inputs(self, images: Tensor, patch_keep: Optional[Tensor], values: bool,
                            patch_masked: Optional[Tensor] = None) -> None:
        check_images(images, self.cfg)
        for idx, name in ((patch_keep, "patch_keep"), (patch_masked, "patch_masked")):
            if idx is not None:
                check_patch_indices(idx, name, images.shape[0], self.cfg.num_patches, values)

    def encode_image(self, images: Tensor, patch_keep: Optional[Tensor] = None) -> Tensor:
        """images: [B, C, H, W]; patch_keep: [B, Nk] visible patch indices or None (all) -> [B, 1 + Nk, D]."""
        self._check_image_inputs(images, patch_keep, values=True)
        return self._encode(images, patch_keep)[0]

    def encode_text(self, ids: Tensor, positions: Optional[Tensor] = None,
                    attention_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """ids, positions: [B, L] (positions default 0..L-1); attention_mask: [B, L] bool (default all real)
        -> (h [B, 1 + L, D], key_mask [B, 1 + L] with True on [CLS] and real tokens)."""
        positions, attention_mask = _text_defaults(ids, positions, attention_mask)
        check_text(ids, positions, attention_mask, self.cfg, values=True)
        h, key_mask = self._encode(ids=ids, positions=positions, text_mask=attention_mask)
        return h, key_mask

    def encode_pair(self, images: Tensor, ids: Tensor, positions: Optional[Tensor] = None,
                    attention_mask: Optional[Tensor] = None,
                    patch_keep: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Joint sequence [CLS, visible patches, visible text].

        images: [B, C, H, W]; ids/positions/attention_mask: [B, L]; patch_keep: [B, Nk] or None (all patches)
        -> (h [B, 1 + Nk + L, D], key_mask [B, 1 + Nk + L])
        """
        positions, attention_mask = _text_defaults(ids, positions, attention_mask)
        self._check_image_inputs(images, patch_keep, values=True)
        check_text(ids, positions, attention_mask, self.cfg, values=True)
        check_same_batch(images.shape[0], ids.shape[0])
        return self._encode(images, patch_keep, ids, positions, attention_mask)

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
        return self.itm_head(self._match_state(h, key_mask)).float()

    # -------------------------------------------------------------------------------------------- training
    def forward(self, batch, objectives: dict[str, float], dist: Optional[DistContext] = None,
                touch_unused: bool = False, generator: Optional[torch.Generator] = None,
                align_inputs: Optional[str] = None) -> dict[str, Tensor]:
        """One micro-batch of pretraining.

        batch:        ImageBatch (mim) | TextBatch (mlm) | PairBatch (any of cmm, itc, itm)
        objectives:   objective -> weight; the cmm weight multiplies cmm_image_loss + cmm_text_loss
        dist:         rank / world size / gathers for itc and itm (None: single process)
        touch_unused: give every parameter this micro-batch does not use a zero gradient (ZeRO-3, offload)
        generator:    random source of ITM negative sampling (on the batch's device)
        align_inputs: what contrastive and ITM see for this batch, overriding ``cfg.align_inputs`` (the trainer's
                      unmasked tail passes "full"); None: the config's
        returns       {"loss": 0-dim weighted sum, "<term>_loss": unweighted terms, detached diagnostics}
        """
        kind = batch_kind(batch)
        self._check_objectives(kind, objectives)
        dist = dist or LOCAL
        used: list[nn.Module] = [self.type_embed, self.encoder]
        if kind == "image":
            terms = self._image_terms(batch, used)
        elif kind == "text":
            terms = self._text_terms(batch, used)
        else:
            terms = self._pair_terms(batch, objectives, dist, generator, used, align_inputs or self.cfg.align_inputs)
        loss = sum(w * terms[t] for name, w in objectives.items() for t in OBJECTIVES[name].terms)
        if touch_unused:
            loss = loss + self._zero_unused(used, logit_scale_used="itc" in objectives and kind == "pair")
        return {"loss": loss, **terms}

    def _check_objectives(self, kind: str, objectives: dict[str, float]) -> None:
        allowed = objectives_for(kind)
        if not objectives:
            raise ValueError(f"objectives is empty; valid for {kind} batches: {', '.join(allowed)}")
        bad = [o for o in objectives if o not in allowed]
        if bad:
            raise ValueError(f"objectives {bad} are not valid for {kind} batches; valid: {', '.join(allowed)}")

    def _values(self, t: Tensor) -> bool:
        return self.check_values or t.device.type == "cpu"

    def _image_terms(self, b: ImageBatch, used: list[nn.Module]) -> dict[str, Tensor]:
        self._check_image_inputs(b.images, b.patch_keep, self._values(b.images), b.patch_masked)
        dec = self._decoder("mim")
        h, _ = self._encode(b.images, b.patch_keep)
        pixels, _ = dec(h, None, patch_keep=b.patch_keep, patch_masked=b.patch_masked)
        used += [self.image_embed, *dec.part_modules(image=True, text=False)]
        return mim_loss(pixels, b.images, b.patch_masked, self.cfg.patch_size, self.cfg.norm_pix_loss)

    def _check_text_batch(self, t: TextBatch) -> None:
        values = self._values(t.input_ids)
        check_text(t.input_ids, t.positions, t.attention_mask, self.cfg, values)
        check_masked_text(t.masked_positions, t.masked_ids, t.masked_valid, t.input_ids.shape[0], self.cfg, values)

    def _text_terms(self, t: TextBatch, used: list[nn.Module]) -> dict[str, Tensor]:
        self._check_text_batch(t)
        dec = self._decoder("mlm")
        h, key_mask = self._encode(ids=t.input_ids, positions=t.positions, text_mask=t.attention_mask)
        _, states = dec(h, key_mask, text_positions=t.positions, masked_positions=t.masked_positions,
                        masked_valid=t.masked_valid)
        used += [self.text_embed, self.lm_head, *dec.part_modules(image=False, text=True)]
        return mlm_loss(self.lm_head(states), t.masked_ids, t.masked_valid)

    def _pair_terms(self, p: PairBatch, objectives: dict[str, float], dist: DistContext,
                    generator: Optional[torch.Generator], used: list[nn.Module], align: str) -> dict[str, Tensor]:
        im, tx = p.image, p.text
        self._check_image_inputs(im.images, im.patch_keep, self._values(im.images), im.patch_masked)
        self._check_text_batch(tx)
        check_same_batch(im.images.shape[0], tx.input_ids.shape[0])
        used += [self.image_embed, self.text_embed]
        terms: dict[str, Tensor] = {}
        positive_cls = None
        if "cmm" in objectives:
            dec = self._decoder("cmm")
            h, key_mask = self._encode(im.images, im.patch_keep, tx.input_ids, tx.positions, tx.attention_mask)
            pixels, states = dec(h, key_mask, im.patch_keep, im.patch_masked, tx.positions, tx.masked_positions,
                                 tx.masked_valid)
            terms.update(cmm_loss(pixels, im.images, im.patch_masked, self.cfg.patch_size, self.cfg.norm_pix_loss,
                                  self.lm_head(states), tx.masked_ids, tx.masked_valid))
            used += [self.lm_head, *dec.part_modules(image=True, text=True)]
            if align == "masked":
                positive_cls = self._match_state(h, key_mask)  # ITM positives = the CMM inputs: reuse them
        if "itc" in objectives or "itm" in objectives:
            inputs = self._align_inputs(p, align)
            with nullcontext() if "itc" in objectives else torch.no_grad():
                image_emb = self.image_proj(self._encode(inputs.images, inputs.patch_keep)[0][:, 0])
                text_emb = self.text_proj(self._encode(ids=inputs.ids, positions=inputs.positions,
                                                       text_mask=inputs.mask)[0][:, 0])
            if "itc" in objectives:
                terms.update(contrastive_loss(image_emb, text_emb, self.logit_scale, dist))
                used += [self.image_proj, self.text_proj]
            if "itm" in objectives:
                terms.update(itm_loss(image_emb, text_emb, self.logit_scale, inputs, self._joint_cls, self.itm_head,
                                      dist, self.cfg.pad_token_id, generator, positive_cls,
                                      hardness=self.cfg.itm_hardness, negatives=self.cfg.itm_negatives))
                used.append(self.itm_head)
        return terms

    def _align_inputs(self, p: PairBatch, mode: str) -> JointInputs:
        """What contrastive and ITM see (``mode``: ``cfg.align_inputs`` or the forward's override).

        "full": the unmasked pair; "masked_image": the whole caption with the patches of ``p.align_keep`` when
        the loader drew them (the stream's own ratio), else the CMM-visible patches (image masking as in FLIP,
        text kept: it is the cheap side); "masked": exactly the CMM inputs.
        """
        tx = p.text
        if mode == "masked":
            return JointInputs(p.image.images, p.image.patch_keep, tx.input_ids, tx.positions, tx.attention_mask)
        if tx.full_mask.shape != tx.full_ids.shape:
            raise ValueError(f"full_mask {tuple(tx.full_mask.shape)} must have the shape of full_ids "
                             f"{tuple(tx.full_ids.shape)}")
        positions = _text_defaults(tx.full_ids, None, tx.full_mask)[0]
        check_text(tx.full_ids, positions, tx.full_mask, self.cfg, self._values(tx.full_ids), name="full_ids")
        patch_keep = None
        if mode == "masked_image":
            patch_keep = p.image.patch_keep if p.align_keep is None else p.align_keep
            if p.align_keep is not None:
                check_patch_indices(p.align_keep, "align_keep", p.batch_size, self.cfg.num_patches,
                                    self._values(p.align_keep))
        return JointInputs(p.image.images, patch_keep, tx.full_ids, positions, tx.full_mask)

    def _joint_cls(self, j: JointInputs) -> Tensor:
        """JointInputs of n pairs -> the joint state the ITM head reads [n, D]: [CLS], or with
        ``itm_readout="mean"`` the mean over [CLS], patches and real text tokens."""
        return self._match_state(*self._encode(j.images, j.patch_keep, j.ids, j.positions, j.mask))

    def _match_state(self, h: Tensor, key_mask: Tensor) -> Tensor:
        """Joint encoding h [n, L, D] with key_mask [n, L] -> the state the ITM head reads [n, D]."""
        if self.cfg.itm_readout == "cls":
            return h[:, 0]
        weights = key_mask.to(h.dtype)[..., None]
        return (h * weights).sum(dim=1) / weights.sum(dim=1)

    def _zero_unused(self, used: list[nn.Module], logit_scale_used: bool) -> Tensor:
        """0 * (outputs of every parameter-owning module not in ``used``) and of unused root parameters."""
        seen = {id(m) for u in used if u is not None for m in u.modules()}
        unused = [m for m in self.modules() if m is not self and id(m) not in seen
                  and next(m.parameters(recurse=False), None) is not None]
        zero = zero_touch(unused).to(self.logit_scale.device)
        if not logit_scale_used:
            zero = zero + 0.0 * self.logit_scale.float().sum()
        return zero


def _text_defaults(ids: Tensor, positions: Optional[Tensor], mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Positions 0..L-1 (0 on padding) and an all-real mask where not given."""
    if mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    if positions is None:
        positions = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
        positions = torch.where(mask, positions, torch.zeros_like(positions))
    return positions, mask
