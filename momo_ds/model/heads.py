"""Output heads: the tied language-model head, contrastive projections and the ITM classifier."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TiedLMHead(nn.Module):
    """Vocabulary logits whose weight IS the encoder's token embedding (same Parameter, shared storage).

    x: [..., D] -> [..., V];  logits = x @ token_embed.weight^T + bias
    """

    def __init__(self, token_embed: nn.Embedding):
        super().__init__()
        self.weight = token_embed.weight  # registered twice on purpose: one Parameter, two owners
        self.bias = nn.Parameter(torch.zeros(token_embed.num_embeddings))
        self.in_features = token_embed.embedding_dim

    def tie(self, token_embed: nn.Embedding) -> None:
        """Re-tie after a load that replaced either Parameter (e.g. a checkpoint converter that dropped one)."""
        self.weight = token_embed.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class ContrastiveHead(nn.Module):
    """[CLS] state -> L2-normalised embedding. cls: [B, D] -> [B, P] (float32)."""

    def __init__(self, dim: int, proj_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj_dim, bias=False)

    def forward(self, cls: Tensor) -> Tensor:
        return F.normalize(self.proj(cls).float(), dim=-1)


def init_logit_scale(temperature: float) -> nn.Parameter:
    """log(1/T) as a shape-[1] parameter (a 0-dim parameter breaks ``deepspeed.initialize``)."""
    return nn.Parameter(torch.full((1,), math.log(1.0 / temperature)))
