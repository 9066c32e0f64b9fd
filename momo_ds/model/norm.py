"""LayerNorm factory: NVIDIA apex's FusedLayerNorm when it is installed, torch's LayerNorm otherwise.

PyPI's package named ``apex`` is unrelated to NVIDIA apex; importing it may fail or succeed without a
``normalization`` module, so detection only accepts a module that really provides ``FusedLayerNorm``.
"""
from __future__ import annotations

from typing import Optional

from torch import nn


def _detect_fused_layer_norm() -> Optional[type]:
    """NVIDIA apex's FusedLayerNorm class, or None (apex absent, broken, or PyPI's unrelated ``apex``)."""
    try:
        from apex import normalization  # noqa: PLC0415 (optional dependency)
    except Exception:  # ImportError, or any error raised while importing an unrelated/broken package
        return None
    cls = getattr(normalization, "FusedLayerNorm", None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


FUSED_LAYER_NORM: Optional[type] = _detect_fused_layer_norm()


def layer_norm(dim: int, eps: float) -> nn.Module:
    """A LayerNorm over the last dim with ``weight``/``bias`` parameters (fused apex kernel when available)."""
    if FUSED_LAYER_NORM is not None:
        return FUSED_LAYER_NORM(dim, eps=eps)
    return nn.LayerNorm(dim, eps=eps)
