"""Multi-head self-attention with a switchable kernel backend.

Backends (``ModelConfig.attn_backend``):
  sdpa          torch's scaled_dot_product_attention (flash / mem-efficient / cuDNN kernels on GPU). Image-only
                sequences have no padding and run unmasked; sequences with text pass a boolean key-padding mask
                (deciding per batch whether it is all-True would cost a host sync).
  math          plain softmax(QK^T / sqrt(d)) V, the reference the tests compare against.
  flash_varlen  flash-attn's variable-length kernel on the unpadded tokens (GPU, fp16/bf16; needs ``flash_attn``).
"""
from __future__ import annotations

import typing
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momo_ds.config import AttnBackend

BACKENDS = typing.get_args(AttnBackend)


def _flash_varlen_fn():
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func  # noqa: PLC0415 (optional dependency)
    except Exception as e:  # ImportError or a broken CUDA extension
        return None, e
    return flash_attn_varlen_qkvpacked_func, None


def check_backend(backend: str) -> None:
    """Raise ValueError now (at build time) when ``backend`` is unknown or its kernel cannot be imported."""
    if backend not in BACKENDS:
        raise ValueError(f"attn_backend={backend!r} is unknown; valid: {', '.join(BACKENDS)}")
    if backend == "flash_varlen":
        fn, err = _flash_varlen_fn()
        if fn is None:
            raise ValueError(f"attn_backend='flash_varlen' needs the flash_attn package, which does not import "
                             f"({type(err).__name__}: {err}); use 'sdpa' or install flash-attn")


def math_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> Tensor:
    """q, k, v: [B, H, L, d]; key_mask: [B, L] bool (True = attend) or None -> [B, H, L, d]."""
    scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v


def flash_varlen_attention(qkv: Tensor, key_mask: Optional[Tensor]) -> Tensor:
    """qkv: [B, L, 3, H, d]; key_mask: [B, L] bool or None -> [B, L, H, d] (zeros at padding).

    Padding may sit anywhere in a row (decoders append mask tokens after padded text): the real tokens of each
    row are packed in order, which attention (permutation-equivariant given positions) does not care about.
    """
    fn, _ = _flash_varlen_fn()
    b, length = qkv.shape[:2]
    if key_mask is None:
        key_mask = torch.ones(b, length, dtype=torch.bool, device=qkv.device)
    lengths = key_mask.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    index = key_mask.flatten().nonzero().squeeze(1)  # one host sync; only on this opt-in GPU path
    packed = qkv.flatten(0, 1).index_select(0, index)
    out = fn(packed, cu_seqlens, length, dropout_p=0.0, causal=False)  # max_seqlen: the padded length bounds it
    full = out.new_zeros(b * length, *out.shape[1:])
    return full.index_copy(0, index, out).unflatten(0, (b, length))


class Attention(nn.Module):
    """Self-attention named like timm's ViT Attention (``qkv``, ``proj``) so weights transfer by name.

    x: [B, L, D], key_mask: [B, L] bool (True = real token) or None -> [B, L, D]
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        check_backend(backend)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        b, length, dim = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, self.head_dim)
        if self.backend == "flash_varlen":
            out = flash_varlen_attention(qkv, key_mask).flatten(2)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, d] each (timm's layout)
            if self.backend == "sdpa":
                mask = None if key_mask is None else key_mask[:, None, None, :]
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                out = math_attention(q, k, v, key_mask)
            out = out.transpose(1, 2).reshape(b, length, dim)
        return self.proj(out)


__all__ = ["Attention", "BACKENDS", "check_backend", "math_attention", "flash_varlen_attention"]
