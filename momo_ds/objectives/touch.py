"""Zero gradients for parameters a micro-batch does not use.

ZeRO-3 and CPU-offloaded optimizers mis-handle a parameter whose gradient is missing in some micro-batches of a
step (stale or dropped gradients, as measured in the README's design notes). The fix: run every unused leaf
module on a tiny detached input and add ``0 * output.sum()`` to the loss. Calling the module (not reading its ``.weight``)
matters: ZeRO-3 gathers a module's partitioned parameters in its forward pre-hook.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from momo_ds.model.embeddings import Token
from momo_ds.model.heads import TiedLMHead


def _touch_leaf(m: nn.Module) -> Tensor:
    """Run a parameter-owning leaf module on a zero input of the smallest valid shape; returns its output."""
    p = next(m.parameters(recurse=False))
    kw = dict(device=p.device, dtype=p.dtype)
    if isinstance(m, Token):
        return m()
    if isinstance(m, (nn.Linear, TiedLMHead)):
        return m(torch.zeros(1, m.in_features, **kw))
    if isinstance(m, nn.Conv2d):
        return m(torch.zeros(1, m.in_channels, *m.kernel_size, **kw))
    if isinstance(m, nn.Embedding):
        return m(torch.zeros(1, dtype=torch.long, device=p.device))
    if hasattr(m, "normalized_shape"):  # torch or apex LayerNorm
        return m(torch.zeros(1, *m.normalized_shape, **kw))
    raise TypeError(f"zero_touch: no rule for {type(m).__name__} (add one so its parameters get gradients)")


def zero_touch(modules: Iterable[nn.Module]) -> Tensor:
    """0-dim float32 zero whose backward gives every parameter under ``modules`` a zero gradient."""
    total = None
    seen: set[int] = set()
    for mod in modules:
        for m in mod.modules():
            if id(m) in seen or next(m.parameters(recurse=False), None) is None:
                continue
            seen.add(id(m))
            term = _touch_leaf(m).float().sum() * 0.0
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total
