"""Masked language modelling: cross-entropy on the masked tokens only."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_token_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Mean cross-entropy over the valid masked slots of the whole batch.

    logits: [B, M, V]; targets: [B, M] ids; valid: [B, M] bool -> 0-dim float32 (0 when nothing is masked)
    """
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    weights = valid.flatten().to(ce.dtype)
    return (ce * weights).sum() / weights.sum().clamp(min=1.0)


def mlm_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """{"mlm_loss"}: see :func:`masked_token_loss`."""
    return {"mlm_loss": masked_token_loss(logits, targets, valid)}
