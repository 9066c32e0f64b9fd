"""Cross-modal masking: reconstruct masked patches and masked tokens of a pair from the joint decoder."""
from __future__ import annotations

from torch import Tensor

from momo_ds.objectives.mim import masked_pixel_loss
from momo_ds.objectives.mlm import masked_token_loss


def cmm_loss(pixel_pred: Tensor, images: Tensor, patch_masked: Tensor, patch_size: int, norm_pix: bool,
             text_logits: Tensor, masked_ids: Tensor, masked_valid: Tensor) -> dict[str, Tensor]:
    """{"cmm_image_loss", "cmm_text_loss"} (the stream's cmm weight applies to their sum).

    pixel_pred: [B, Nm, p*p*C] at ``patch_masked`` [B, Nm]; images: [B, C, H, W]
    text_logits: [B, M, V] at the masked text slots; masked_ids, masked_valid: [B, M]
    """
    return {
        "cmm_image_loss": masked_pixel_loss(pixel_pred, images, patch_masked, patch_size, norm_pix),
        "cmm_text_loss": masked_token_loss(text_logits, masked_ids, masked_valid),
    }
