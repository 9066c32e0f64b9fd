"""The contract between the data side and the model.

The data side (loader workers, in collate) draws every mask; the model consumes these tensors and never draws
randomness of its own during training. Shapes use B = batch, H/W = image size, N = patches per image,
Nk = visible (kept) patches, Nm = masked patches (Nk + Nm = N, the same for every image of a batch),
Lv = longest visible text in the batch, M = most masked tokens of any text in the batch, L = longest full text.

Patch indices are row-major over the (H/p, W/p) grid and sorted ascending inside ``patch_keep`` and
``patch_masked``. Text positions are 0-based positions in the unmasked token sequence (the model adds its own
[CLS]; token ids carry no special tokens of the tokenizer).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


def _map_tensors(obj, fn):
    """Apply ``fn`` to every tensor field (recursing into nested batch dataclasses)."""
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Tensor):
            changes[f.name] = fn(v)
        elif dataclasses.is_dataclass(v):
            changes[f.name] = _map_tensors(v, fn)
    return dataclasses.replace(obj, **changes)


class _BatchOps:
    def to(self, device, non_blocking: bool = False):
        """Move every tensor to ``device``; floating images may be cast with ``.to(dtype)`` separately."""
        return _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return _map_tensors(self, lambda t: t.pin_memory())

    @property
    def batch_size(self) -> int:
        raise NotImplementedError


@dataclass
class ImageBatch(_BatchOps):
    """Images with their MIM/CMM patch split.

    images:       [B, 3, H, W] float32, normalised (ImageNet mean/std)
    patch_keep:   [B, Nk] int64, sorted indices of visible patches
    patch_masked: [B, Nm] int64, sorted indices of masked patches
    labels:       [B] int64 class labels, or None
    """

    images: Tensor
    patch_keep: Tensor
    patch_masked: Tensor
    labels: Optional[Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]


@dataclass
class TextBatch(_BatchOps):
    """Tokenised text split into what the encoder sees and what the decoder must reconstruct.

    input_ids:       [B, Lv] int64 visible token ids, right-padded with the pad id
    positions:       [B, Lv] int64 original positions of the visible tokens (0 on padding)
    attention_mask:  [B, Lv] bool, True on real (visible) tokens, False on padding
    masked_positions:[B, M] int64 original positions of the masked tokens (0 where invalid)
    masked_ids:      [B, M] int64 target ids of the masked tokens (pad id where invalid)
    masked_valid:    [B, M] bool, True where a masked target exists
    full_ids:        [B, L] int64 unmasked ids (for contrastive / ITM), right-padded
    full_mask:       [B, L] bool, True on real tokens of ``full_ids``

    Every row has at least one visible token. With mask ratio 0 (no MLM), M may be 0.
    """

    input_ids: Tensor
    positions: Tensor
    attention_mask: Tensor
    masked_positions: Tensor
    masked_ids: Tensor
    masked_valid: Tensor
    full_ids: Tensor
    full_mask: Tensor

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class PairBatch(_BatchOps):
    """Image-text pairs: row i of ``image`` belongs with row i of ``text`` (CMM masks drawn on both).

    align_keep: [B, Na] int64 sorted indices of the patches contrastive and ITM see, drawn independently of the
    CMM mask (the stream's ``align_mask_ratio``), or None (the model's ``align_inputs`` decides alone)
    """

    image: ImageBatch
    text: TextBatch
    align_keep: Optional[Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.image.batch_size


@dataclass
class JointInputs:
    """Pairs as contrastive and ITM see them (the model's ``embed`` and ``match`` outputs read these).

    images: [B, C, H, W]; patch_keep: [B, Nk] visible patches or None (all patches)
    ids, positions: [B, L] int64 text tokens and their positions; mask: [B, L] bool (True = real token)
    """

    images: Tensor
    patch_keep: Optional[Tensor]
    ids: Tensor
    positions: Tensor
    mask: Tensor

    def gather(self, dist, pad_id: int) -> "JointInputs":
        """Every rank's inputs, concatenated in rank order (text padded to the longest rank). No gradient.
        ``dist``: a :class:`momo_ds.objectives.dist.DistContext`.

        The three text tensors travel as one [B, L, 3] tensor: one length exchange (a host sync) and one gather
        instead of three of each. Padding is (pad_id, position 0, mask False), as the loader pads.
        """
        if dist.world_size == 1:
            return self
        images = dist.gather(self.images)
        patch_keep = None if self.patch_keep is None else dist.gather(self.patch_keep)
        text = torch.stack([self.ids, self.positions, self.mask.long()], dim=2)
        # gather_padded pads with one scalar: pad with -1 (no id, position or mask value) and then put the
        # per-channel padding values back
        text = dist.gather_padded(text, -1)
        pad = torch.tensor([pad_id, 0, 0], dtype=text.dtype, device=text.device)
        text = torch.where(text == -1, pad, text)
        return JointInputs(images, patch_keep, ids=text[..., 0], positions=text[..., 1], mask=text[..., 2].bool())

    def select(self, image_idx: Tensor, text_idx: Tensor) -> "JointInputs":
        """Pairs (images[image_idx[k]], text[text_idx[k]]) -> JointInputs of len(image_idx) rows."""
        return JointInputs(
            images=self.images.index_select(0, image_idx),
            patch_keep=None if self.patch_keep is None else self.patch_keep.index_select(0, image_idx),
            ids=self.ids.index_select(0, text_idx),
            positions=self.positions.index_select(0, text_idx),
            mask=self.mask.index_select(0, text_idx),
        )


BATCH_TYPES = {"image": ImageBatch, "text": TextBatch, "pair": PairBatch}


def batch_kind(batch) -> str:
    """'image' | 'text' | 'pair' for a batch object."""
    for kind, cls in BATCH_TYPES.items():
        if isinstance(batch, cls):
            return kind
    raise TypeError(f"not a momo_ds batch: {type(batch).__name__}")

