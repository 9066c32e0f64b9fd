"""Global image-text contrastive loss (CLIP / FLAVA "global contrastive"), local rows vs gathered columns.

Each rank scores its B local rows against the B*world gathered columns; the gather carries gradient, so with
DeepSpeed's mean over ranks the total gradient equals the single-process loss on the global batch (no
world-size blow-up, no B_global x B_global matrix per rank).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from momo_ds.objectives.dist import LOCAL, DistContext

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of exp(logit_scale)


def logit_scale_value(logit_scale: Tensor) -> Tensor:
    """log-temperature parameter [1] -> multiplicative scale [1], clamped at 100 (CLIP) at use."""
    return logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor,
                     dist: Optional[DistContext] = None) -> dict[str, Tensor]:
    """{"itc_loss", "itc_acc"}: symmetric cross-entropy, mean of image->text and text->image.

    image_emb, text_emb: [B, P] L2-normalised local embeddings (row i of each is a pair); logit_scale: [1] (log)
    """
    dist = dist or LOCAL
    b = image_emb.shape[0]
    scale = logit_scale_value(logit_scale)
    image_all = dist.gather_with_grad(image_emb)  # [B*world, P]
    text_all = dist.gather_with_grad(text_emb)
    logits_i2t = scale * image_emb.float() @ text_all.float().t()  # [B, B*world]
    logits_t2i = scale * text_emb.float() @ image_all.float().t()
    labels = dist.rank * b + torch.arange(b, device=image_emb.device)
    loss = 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))
    acc = (logits_i2t.argmax(dim=1) == labels).float().mean().detach()
    return {"itc_loss": loss, "itc_acc": acc}

