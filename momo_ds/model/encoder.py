"""Pre-LN ViT blocks and the shared encoder stack (one stack for images, text and image-text pairs).

Submodule names follow timm's ViT ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) so exporting to timm is a rename of the embeddings only.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from momo_ds.model.attention import Attention
from momo_ds.model.norm import layer_norm


class Mlp(nn.Module):
    """x: [..., D] -> [..., D]; Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block. x: [B, L, D], key_mask: [B, L] bool or None -> [B, L, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, backend: str):
        super().__init__()
        self.norm1 = layer_norm(dim, eps)
        self.attn = Attention(dim, num_heads, backend)
        self.norm2 = layer_norm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: nn.ModuleList, x: Tensor, key_mask: Optional[Tensor], grad_checkpointing: bool) -> Tensor:
    """Apply ``blocks`` in order; with ``grad_checkpointing`` each block's activations are recomputed in backward."""
    ckpt = grad_checkpointing and x.requires_grad
    for blk in blocks:
        x = checkpoint(blk, x, key_mask, use_reentrant=False) if ckpt else blk(x, key_mask)
    return x


class Encoder(nn.Module):
    """The shared stack: ``depth`` blocks then a final LayerNorm. x: [B, L, D], key_mask: [B, L] -> [B, L, D]."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, eps: float, backend: str,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, eps, backend) for _ in range(depth)])
        self.norm = layer_norm(dim, eps)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        return self.norm(run_blocks(self.blocks, x, key_mask, self.grad_checkpointing))
