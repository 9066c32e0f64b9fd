"""The FLAVA of the FLAVA reference (flava_reference.py): FlavaForPreTraining at MoMo-tiny's shapes, its
optimizer and schedule as momo_ds builds MoMo's, the summed loss of one step, and the view through which momo_ds.eval
scores it (held-out retrieval and ITM)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from bench_peers import scaled_flava_config
from flava_data import TextIds, with_cls

NO_DECAY_SUFFIXES = ("embeddings.weight", "position_embeddings", "cls_token", "mask_token", "logit_scale")


# ------------------------------------------------------------------------------------------------------- model
def build_flava(mcfg, with_codebook: bool):
    """(FlavaForPreTraining at MoMo-tiny's shapes, random init; codebook pixel size)."""
    from transformers import FlavaForPreTraining

    fcfg, codebook_px = scaled_flava_config(mcfg)
    fcfg.text_config.max_position_embeddings = mcfg.max_text_len + 1  # MoMo's text table plus FLAVA's [CLS]
    fcfg.init_codebook = with_codebook
    if not with_codebook:
        fcfg.mim_weight = fcfg.mmm_image_weight = 0.0
    return FlavaForPreTraining(fcfg), codebook_px


class _DecayView:
    """What momo_ds.engine.optim.param_groups reads, with FLAVA's embeddings, [CLS]/mask tokens and temperature
    named as not decayed (MoMo's rule; FLAVA lists none itself)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def named_parameters(self):
        return self.model.named_parameters()

    def no_weight_decay(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters() if n.endswith(NO_DECAY_SUFFIXES)]


def build_optimizer(flava, train_cfg, steps: int, lr: float):
    """AdamW + warm-up/cosine schedule of momo_ds.engine.optim, the recipe's settings stretched to ``steps``."""
    from momo_ds.engine.optim import build_optimizer as momo_optimizer
    from momo_ds.engine.optim import build_scheduler

    warmup = round(steps * train_cfg.warmup_steps / train_cfg.max_steps)
    cfg = dataclasses.replace(train_cfg, lr=lr, min_lr=train_cfg.min_lr * lr / train_cfg.lr, max_steps=steps,
                              warmup_steps=warmup)
    opt = momo_optimizer(_DecayView(flava), cfg, "cpu")
    return opt, build_scheduler(opt, cfg), cfg


def step_losses(flava, inputs: dict[str, dict]) -> tuple[Tensor, dict[str, float]]:
    """Forward every stream's inputs -> (summed loss, FLAVA's loss terms)."""
    total, terms = 0.0, {}
    for x in inputs.values():
        out = flava(**x)
        total = total + out.loss
        terms.update({k: float(v.detach()) for k, v in out.loss_info.items() if v is not None})
    terms["loss"] = float(total.detach())
    return total, terms


# -------------------------------------------------------------------------------------------------- evaluation
class FlavaEvalView:
    """The methods momo_ds.eval's retrieval (image_features, text_features) and ITM (+ match_logits, cfg) call,
    answered by FLAVA. Texts arrive as momo_ds ids; [CLS] is put in front here."""

    def __init__(self, flava, ids: TextIds):
        self.flava, self.ids = flava, ids
        self.cfg = SimpleNamespace(pad_token_id=ids.pad)

    def image_features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, P]: the projected, normalised [CLS] state global contrastive trains."""
        out = self.flava.flava.get_image_features(pixel_values=images)
        return F.normalize(out.pooler_output[:, 0], dim=-1)

    def text_features(self, ids: Tensor, mask: Tensor) -> Tensor:
        ids, mask = with_cls(ids, mask, self.ids.cls)
        out = self.flava.flava.get_text_features(input_ids=ids, attention_mask=mask)
        return F.normalize(out.pooler_output[:, 0], dim=-1)

    def match_logits(self, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, 2] ITM logits (class 1 = match, FLAVA's itm_labels) of the unmasked pairs."""
        ids, mask = with_cls(ids, mask, self.ids.cls)
        out = self.flava.flava(input_ids=ids, pixel_values=images, attention_mask=mask, skip_multimodal_encoder=False)
        return self.flava.itm_head(out.multimodal_embeddings).float()


@torch.no_grad()
def evaluate(flava, info, ids: TextIds, mcfg, itm: bool = True) -> dict:
    """Held-out retrieval (and ITM) on the pair val split, as evaluate_synthetic runs them for MoMo."""
    from momo_ds.data import build_eval_loader, load_tokenizer
    from momo_ds.eval.itm import evaluate_itm
    from momo_ds.eval.retrieval import evaluate_retrieval
    from momo_ds.eval.runner import DEFAULT_MAX_LEN

    cpu = torch.device("cpu")
    loader = build_eval_loader([info.shards["pair"]["val"]], "pair", tokenizer=load_tokenizer(info.tokenizer),
                               image_size=mcfg.img_size, patch_size=mcfg.patch_size, batch_size=256,
                               max_text_len=min(DEFAULT_MAX_LEN, mcfg.max_text_len))
    view = FlavaEvalView(flava.eval(), ids)
    report = {"retrieval": evaluate_retrieval(view, loader, cpu)}
    if itm:
        report["itm"] = evaluate_itm(view, loader, cpu)
    flava.train()
    return report
