"""The task layer: a batch, the model and a distributed context in, the named loss terms out.

:class:`momo_ds.model.MoMo` is the network and returns predictions (``MoMo.forward(inputs, output)``); this
module decides what each objective feeds it, which loss reads the predictions, how the terms are weighted, what
the ranks exchange, and which parameters get the zero-gradient touch. It is an ``nn.Module`` holding the model
so that the DeepSpeed engine wraps it and one engine call runs one stream's whole micro-batch (the model's own
forward may run several times inside it: CMM, the contrastive embeddings, the ITM pairs).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor, nn

from momo_ds.batch import ImageBatch, JointInputs, PairBatch, TextBatch, batch_kind
from momo_ds.model.momo import MoMo, text_defaults
from momo_ds.model.validate import check_patch_indices, check_text
from momo_ds.objectives.cmm import cmm_loss
from momo_ds.objectives.contrastive import contrastive_loss
from momo_ds.objectives.dist import LOCAL, DistContext
from momo_ds.objectives.itm import itm_loss
from momo_ds.objectives.mim import mim_loss
from momo_ds.objectives.mlm import mlm_loss
from momo_ds.objectives.registry import ENCODER_MODULES, OBJECTIVES, objectives_for
from momo_ds.objectives.touch import zero_touch


#: how the task's (and so the engine's and the checkpoints') parameter names start: the model is its only child
MODEL_PREFIX = "model."


def model_state(task_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the task (a DeepSpeed checkpoint's) -> the model's, names without :data:`MODEL_PREFIX`."""
    wrong = [k for k in task_state if not k.startswith(MODEL_PREFIX)]
    if wrong:
        raise ValueError(f"not a PretrainTask state dict: {wrong[0]!r} does not start with {MODEL_PREFIX!r}")
    return {k[len(MODEL_PREFIX):]: v for k, v in task_state.items()}


class PretrainTask(nn.Module):
    """MoMo's pretraining objectives over one model (parameters: the model's, under ``model.``).

    dist:         rank / world size / gathers for contrastive and ITM (default: one process)
    touch_unused: give every parameter a micro-batch does not use a zero gradient (ZeRO-3 and offloaded
                  optimizers need it: :mod:`momo_ds.objectives.touch`)
    """

    def __init__(self, model: MoMo, dist: Optional[DistContext] = None, touch_unused: bool = False):
        super().__init__()
        self.model = model
        self.dist = dist or LOCAL
        self.touch_unused = touch_unused

    def forward(self, batch, objectives: dict[str, float], generator: Optional[torch.Generator] = None,
                align_inputs: Optional[str] = None) -> dict[str, Tensor]:
        """One micro-batch of pretraining.

        batch:        ImageBatch (mim) | TextBatch (mlm) | PairBatch (any of cmm, itc, itm)
        objectives:   objective -> weight; the cmm weight multiplies cmm_image_loss + cmm_text_loss
        generator:    random source of ITM negative sampling (on the batch's device)
        align_inputs: what contrastive and ITM see for this batch, overriding ``cfg.align_inputs`` (the trainer's
                      unmasked tail passes "full"); None: the config's
        returns       {"loss": 0-dim weighted sum, "<term>_loss": unweighted terms, detached diagnostics}
        """
        kind = batch_kind(batch)
        check_objectives(kind, objectives)
        cfg = self.model.cfg
        if isinstance(batch, ImageBatch):
            out = self.model(batch, "mim")
            terms = mim_loss(out["pixels"], batch.images, batch.patch_masked, cfg.patch_size, cfg.norm_pix_loss)
        elif isinstance(batch, TextBatch):
            out = self.model(batch, "mlm")
            terms = mlm_loss(out["token_logits"], batch.masked_ids, batch.masked_valid)
        else:
            terms, out = self._pair_terms(batch, objectives, generator, align_inputs or cfg.align_inputs)
        loss = sum(w * terms[t] for name, w in objectives.items() for t in OBJECTIVES[name].terms)
        if self.touch_unused:
            loss = loss + self._zero_unused(objectives, out["logit_scale"])
        return {"loss": loss, **terms}

    def _pair_terms(self, p: PairBatch, objectives: dict[str, float], generator: Optional[torch.Generator],
                    align: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        model, cfg = self.model, self.model.cfg
        im, tx = p.image, p.text
        terms: dict[str, Tensor] = {}
        positive_state = None
        if "cmm" in objectives:
            out = model(p, "cmm")
            terms.update(cmm_loss(out["pixels"], im.images, im.patch_masked, cfg.patch_size, cfg.norm_pix_loss,
                                  out["token_logits"], tx.masked_ids, tx.masked_valid))
            if align == "masked":  # ITM positives = the CMM inputs: reuse their joint encoding
                positive_state = model.match_state(out["features"], out["key_mask"])
        if "itc" in objectives or "itm" in objectives:
            inputs = align_inputs(p, align, model)
            with nullcontext() if "itc" in objectives else torch.no_grad():
                out = model(inputs, "embed")
            if "itc" in objectives:
                terms.update(contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"], self.dist))
            if "itm" in objectives:
                terms.update(itm_loss(out["image_emb"], out["text_emb"], out["logit_scale"], inputs,
                                      lambda pairs: model(pairs, "match")["match_state"], model.itm_head,
                                      self.dist, cfg.pad_token_id, generator, positive_state,
                                      hardness=cfg.itm_hardness, negatives=cfg.itm_negatives))
        return terms, out  # out: the last model output (check_objectives made sure there is one)

    def _zero_unused(self, objectives: dict[str, float], logit_scale: Tensor) -> Tensor:
        """0 * (outputs of every parameter-owning module the objectives do not use) and of ``logit_scale`` when
        unused: the registry's ``modules`` and decoder parts say what is used. ``logit_scale`` comes from the
        model's output (ZeRO-3 gathers the model's own parameters inside its forward only)."""
        model = self.model
        names = set(ENCODER_MODULES).union(*(OBJECTIVES[o].modules for o in objectives))
        used = [m for m in (getattr(model, n) for n in names) if isinstance(m, nn.Module)]
        for o in (OBJECTIVES[name] for name in objectives):
            if o.decoder:
                used += model.decoder(o.decoder).part_modules(image=o.image, text=o.text)
        seen = {id(m) for u in used for m in u.modules()}
        unused = [m for m in model.modules() if m is not model and id(m) not in seen
                  and next(m.parameters(recurse=False), None) is not None]
        zero = zero_touch(unused).to(logit_scale.device)
        if "logit_scale" not in names:
            zero = zero + 0.0 * logit_scale.float().sum()
        return zero


def check_objectives(kind: str, objectives: dict[str, float]) -> None:
    """One-line error unless ``objectives`` is a non-empty set of the registry's objectives for ``kind``."""
    bad = [o for o in objectives if o not in OBJECTIVES or OBJECTIVES[o].kind != kind]
    if not objectives or bad:
        what = f"objectives {bad} are not valid for {kind} batches" if bad else "objectives is empty"
        raise ValueError(f"{what}; valid for {kind} batches: {', '.join(objectives_for(kind))}")


def align_inputs(p: PairBatch, mode: str, model: MoMo) -> JointInputs:
    """What contrastive and ITM see (``mode``: ``cfg.align_inputs`` or the task's override).

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
    positions = text_defaults(tx.full_ids, None, tx.full_mask)[0]
    values = model.check_values or tx.full_ids.device.type == "cpu"
    check_text(tx.full_ids, positions, tx.full_mask, model.cfg, values, name="full_ids")
    patch_keep = None
    if mode == "masked_image":
        patch_keep = p.image.patch_keep if p.align_keep is None else p.align_keep
        if p.align_keep is not None:
            check_patch_indices(p.align_keep, "align_keep", p.batch_size, model.cfg.num_patches, values)
    return JointInputs(p.image.images, patch_keep, tx.full_ids, positions, tx.full_mask)
