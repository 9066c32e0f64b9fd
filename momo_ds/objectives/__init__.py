"""Pretraining losses, one per file; pure functions on tensors returning dicts of named ``*_loss`` terms, and
the task layer that applies them to the model (:class:`momo_ds.objectives.task.PretrainTask`, imported from its
module: it depends on the model, the losses do not).

Distributed pieces (rank, world size, gathers) arrive as a :class:`DistContext`; nothing here imports
torch.distributed.
"""
from momo_ds.objectives.cmm import cmm_loss
from momo_ds.objectives.contrastive import MAX_LOGIT_SCALE, contrastive_loss, logit_scale_value
from momo_ds.objectives.dist import LOCAL, DistContext, LocalDist
from momo_ds.objectives.itm import JointInputs, itm_loss, sample_hard_negatives
from momo_ds.objectives.mim import masked_pixel_loss, mim_loss, patchify, pixel_targets, unpatchify
from momo_ds.objectives.mlm import masked_token_loss, mlm_loss
from momo_ds.objectives.registry import OBJECTIVES, Objective, objectives_for

__all__ = [
    "DistContext", "LocalDist", "LOCAL", "JointInputs", "OBJECTIVES", "Objective", "objectives_for",
    "MAX_LOGIT_SCALE",
    "mim_loss", "mlm_loss", "cmm_loss", "contrastive_loss", "itm_loss", "sample_hard_negatives",
    "patchify", "unpatchify", "pixel_targets", "masked_pixel_loss", "masked_token_loss", "logit_scale_value",
]
