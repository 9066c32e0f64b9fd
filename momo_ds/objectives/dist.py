"""The distributed context losses receive (never torch.distributed itself).

``momo_ds.distributed.TorchDist`` is the real implementation; :class:`LocalDist` is the single-process identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class DistContext(Protocol):
    """Rank, world size and the three gathers the contrastive and ITM losses need.

    gather_with_grad(x: [b, ...]) -> [world*b, ...]  differentiable (backward: sum over ranks, own slice)
    gather(x: [b, ...])           -> [world*b, ...]  no gradient
    gather_padded(x: [b, L_r, ...], pad_value) -> [world*b, max_r L_r, ...]  dim 1 padded, no gradient
    """

    rank: int
    world_size: int

    def gather_with_grad(self, x: Tensor) -> Tensor: ...

    def gather(self, x: Tensor) -> Tensor: ...

    def gather_padded(self, x: Tensor, pad_value=0) -> Tensor: ...


@dataclass
class LocalDist:
    """One process: every gather is the identity."""

    rank: int = 0
    world_size: int = 1

    def gather_with_grad(self, x: Tensor) -> Tensor:
        return x

    def gather(self, x: Tensor) -> Tensor:
        return x.detach()

    def gather_padded(self, x: Tensor, pad_value=0) -> Tensor:
        return x.detach()


LOCAL = LocalDist()
