"""Image-text matching with global hard negatives (VLMo's "global hard negative mining", ALBEF-style sampling).

For each local positive pair one negative text and one negative image are drawn from the gathered batch with
probability softmax(similarity) over the *other* candidates (the positive is excluded exactly, not merely made
unlikely). The negatives' raw inputs are gathered without gradient and encoded jointly on this rank; a 2-way
classifier on the joint [CLS] is trained with cross-entropy over [positives; (image, neg text); (neg image, text)]
with labels 1, 0, 0 — or, with one negative per pair, over [positives; one negative of alternating side], 1, 0.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from momo_ds.batch import JointInputs
from momo_ds.objectives.contrastive import logit_scale_value
from momo_ds.objectives.dist import LOCAL, DistContext


def sample_hard_negatives(sim_i2t: Tensor, sim_t2i: Tensor, rank: int,
                          generator: Optional[torch.Generator] = None, hardness: float = 1.0,
                          excluded: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Draw one hard negative per local row, never the positive.

    sim_i2t: [B, B_global] local images vs all texts; sim_t2i: [B, B_global] local texts vs all images
    (scaled similarities; the positive of local row i is global column rank*B + i).
    hardness: the similarities are multiplied by it before the softmax: 1 draws as the contrastive softmax does,
    0 uniformly over the other pairs (easy negatives).
    excluded: [B, B_global] bool, True where column j is no negative of row i although j is not i's pair (its
    caption is token for token i's): never drawn, unless a row has nothing else.
    returns (neg_text_idx [B], neg_image_idx [B]) global indices.
    """
    b, b_global = sim_i2t.shape
    if b_global < 2:
        raise ValueError(f"ITM hard negatives need at least 2 pairs in the global batch, got {b_global}")
    positive = (rank * b + torch.arange(b, device=sim_i2t.device))[:, None]
    never = torch.zeros(b, b_global, dtype=torch.bool, device=sim_i2t.device).scatter(1, positive, True)
    if excluded is not None:
        wider = never | excluded
        never = torch.where((~wider).any(dim=1, keepdim=True), wider, never)

    def draw(sim: Tensor) -> Tensor:
        # -inf where never drawn: softmax gives exactly 0 there and renormalises over the others (no underflow to
        # an all-zero row, unlike zeroing the positive after the softmax).
        weights = (hardness * sim.detach().float()).masked_fill(never, float("-inf")).softmax(dim=1)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)

    return draw(sim_i2t), draw(sim_t2i)


def same_caption(local: JointInputs, pool: JointInputs) -> Tensor:
    """[B, B_global] bool: local caption i equals pool caption j token for token (templated or repeated
    captions): pairing image i with caption j is then no mismatch, so j must not be i's negative."""
    ids = torch.where(local.mask, local.ids, torch.full_like(local.ids, -1))
    pool_ids = torch.where(pool.mask, pool.ids, torch.full_like(pool.ids, -1))
    width = max(ids.shape[1], pool_ids.shape[1])
    ids = F.pad(ids, (0, width - ids.shape[1]), value=-1)
    pool_ids = F.pad(pool_ids, (0, width - pool_ids.shape[1]), value=-1)
    return (ids[:, None, :] == pool_ids[None, :, :]).all(dim=2)


def itm_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, inputs: JointInputs,
             encode_cls: Callable[[JointInputs], Tensor], head: Callable[[Tensor], Tensor],
             dist: Optional[DistContext] = None, pad_id: int = 0, generator: Optional[torch.Generator] = None,
             positive_cls: Optional[Tensor] = None, hardness: float = 1.0, negatives: int = 2) -> dict[str, Tensor]:
    """{"itm_loss", "itm_acc"}.

    image_emb, text_emb: [B, P] local contrastive embeddings (used detached, only to pick negatives)
    logit_scale:        [1] log scale applied to the similarities before the sampling softmax
    inputs:             this rank's B pairs (what the joint encoder sees: full or CMM-visible inputs)
    encode_cls:         JointInputs of n pairs -> joint [CLS] states [n, D] (the model's joint encoder)
    head:               [n, D] -> [n, 2] ITM logits
    positive_cls:       [B, D] joint [CLS] of the positives when already computed (skips re-encoding them)
    hardness:           how far negatives follow the contrastive similarity (see :func:`sample_hard_negatives`)
    negatives:          joint negatives per positive: 2 (its image with a negative caption, and a negative image
                        with its caption) or 1 (global row index even: the negative caption, odd: the negative
                        image), so the head sees B positives and B negatives
    """
    dist = dist or LOCAL
    b = image_emb.shape[0]
    with torch.no_grad():
        scale = logit_scale_value(logit_scale.detach())
        image_all = dist.gather(image_emb.detach())
        text_all = dist.gather(text_emb.detach())
        sim_i2t = scale * image_emb.detach().float() @ text_all.float().t()
        sim_t2i = scale * text_emb.detach().float() @ image_all.float().t()
        pool = inputs.gather(dist, pad_id)
        neg_text, neg_image = sample_hard_negatives(sim_i2t, sim_t2i, dist.rank, generator, hardness,
                                                    excluded=same_caption(inputs, pool))
        own = dist.rank * b + torch.arange(b, device=image_emb.device)
        if negatives == 2:
            neg_image_idx, neg_text_idx = torch.cat([own, neg_image]), torch.cat([neg_text, own])
        else:  # the drawn negative of the alternating side; both were drawn so the RNG stream is the same
            caption_side = own % 2 == 0
            neg_image_idx = torch.where(caption_side, own, neg_image)
            neg_text_idx = torch.where(caption_side, neg_text, own)
        if positive_cls is None:
            image_idx, text_idx = torch.cat([own, neg_image_idx]), torch.cat([own, neg_text_idx])
        else:
            image_idx, text_idx = neg_image_idx, neg_text_idx
        pairs = pool.select(image_idx, text_idx)
    cls = encode_cls(pairs)
    if positive_cls is not None:
        cls = torch.cat([positive_cls.to(cls.dtype), cls])
    logits = head(cls).float()  # [(1 + negatives) B, 2]
    labels = (torch.arange(logits.shape[0], device=logits.device) < b).long()  # 1 for the B positives, then 0
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(dim=1) == labels).float().mean().detach()
    return {"itm_loss": loss, "itm_acc": acc}
