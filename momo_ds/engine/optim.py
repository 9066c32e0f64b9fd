"""Optimizer parameter groups and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from momo_ds.config import TrainConfig

EMBEDDING_SUFFIXES = ("token_embed.weight", "pos_embed.weight", "logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices, and everything else: every tensor of ndim <= 1 (norms, biases) and
    the names the model lists in ``no_weight_decay()`` (token/position/type embeddings, CLS and mask tokens, the
    temperature). Tied weights are listed once."""
    decay, no_decay = [], []
    seen = set()
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    exempt |= {n for n, _ in model.named_parameters() if n.endswith(EMBEDDING_SUFFIXES)}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim <= 1 or name in exempt:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """DeepSpeed FusedAdam on GPU (if its op builds), torch AdamW elsewhere; same hyper-parameters."""
    groups = param_groups(model, cfg.weight_decay)
    betas = tuple(cfg.betas)
    if device_type == "cuda":
        try:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(groups, lr=cfg.lr, betas=betas, eps=1e-8, adam_w_mode=True)
        except Exception as e:  # op not buildable here: fall back, but say so
            print(f"[momo_ds] FusedAdam unavailable ({type(e).__name__}: {e}); using torch.optim.AdamW(fused=True)")
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base LR at optimizer step ``step``: linear warm-up, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    min_ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.max_steps, min_ratio))
