"""What FLAVA trains and is evaluated on in the FLAVA reference (flava_reference.py): MoMo's tiny stage-3 data
config with the loader's masks off, the synthetic WordPiece's special ids, and FlavaForPreTraining.forward's
keyword arguments drawn from momo_ds batches: [CLS] in front, ITM negatives passed round among the picked pairs,
BERT's text masking, and (with a codebook) random patch masks and the codebook's pixels."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bench_peers import FLAVA_IMAGE_MASK, FLAVA_TEXT_MASK  # first: bench_peers puts the checkout on sys.path
from momo_ds.config import load_recipe, packaged_recipe
from momo_ds.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IGNORE = -100  # cross-entropy's ignore index, FlavaConfig.ce_ignore_index
ITM_NEGATIVES = 0.1  # torchmultimodal's FLAVA VLDataModule: itm_probability
LOGIT_LAPLACE_EPS = 0.1  # FLAVA's codebook input map


# -------------------------------------------------------------------------------------------------------- data
def stage3_data(out: Path, seed: int, num: int, pair_batch: int, text_batch: int, workers: Optional[int]):
    """(DataConfig of MoMo's tiny stage 3 on the seed's synthetic train shards, loader masks off; SyntheticInfo;
    the recipe). text_batch 0 drops the text stream."""
    from momo_ds.data import resolve_synthetic

    recipe = load_recipe(packaged_recipe("tiny", 3))
    data = dataclasses.replace(recipe.data, seed=seed, synthetic_num=num,
                               num_workers=recipe.data.num_workers if workers is None else workers)
    data, info = resolve_synthetic(data, out / f"data_seed{seed}")
    streams = []
    for s in data.streams:
        size = pair_batch if s.kind == "pair" else text_batch
        if size > 0:  # the names stay "text" / "pair": the loader's seeds derive from them
            streams.append(dataclasses.replace(s, batch_size=size, image_mask_ratio=0.0, text_mask_ratio=0.0,
                                               align_mask_ratio=None))
    return dataclasses.replace(data, streams=streams), info, recipe


@dataclasses.dataclass
class TextIds:
    """The synthetic WordPiece's special ids FLAVA needs (momo_ds batches carry none) and its size."""

    cls: int
    mask: int
    pad: int
    vocab: int
    first_word: int  # ids below it are special tokens: never drawn as MLM's random replacements

    @classmethod
    def load(cls, tokenizer_json: str) -> "TextIds":
        from tokenizers import Tokenizer

        from momo_ds.data.text import SPECIAL_TOKENS

        tok = Tokenizer.from_file(tokenizer_json)
        special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in special.items() if i is None]
        if missing:
            raise ValueError(f"{tokenizer_json}: no {', '.join(missing)} token")
        return cls(special["[CLS]"], special["[MASK]"], special["[PAD]"], tok.get_vocab_size(),
                   max(special.values()) + 1)


# ------------------------------------------------------------------------------------------------ forward inputs
def with_cls(ids: Tensor, mask: Tensor, cls_id: int) -> tuple[Tensor, Tensor]:
    """ids [B, L], mask [B, L] (bool or 0/1) -> [B, 1 + L] each, [CLS] first (mask: long, as FLAVA takes it)."""
    b = ids.shape[0]
    return (torch.cat([ids.new_full((b, 1), cls_id), ids], dim=1),
            torch.cat([mask.new_ones((b, 1)), mask], dim=1).long())


def mlm_targets(ids: Tensor, mask: Tensor, text: TextIds, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """FLAVA's text masking (BERT's, through transformers' MLM collators): 15 % of the real tokens are picked (at
    least one per text, so that no batch is without targets); of those 80 % become [MASK], 10 % a random word and
    10 % stay. ids [B, L], mask [B, L] bool -> (input ids [B, L], labels [B, L]: the ids where picked, else IGNORE)."""
    pick = (torch.rand(ids.shape, generator=gen) < FLAVA_TEXT_MASK) & mask
    pick[:, 0] |= ~pick.any(dim=1)
    how = torch.rand(ids.shape, generator=gen)
    random_words = torch.randint(text.first_word, max(text.first_word + 1, text.vocab), ids.shape, generator=gen)
    masked = torch.where(pick & (how < 0.8), torch.full_like(ids, text.mask), ids)
    masked = torch.where(pick & (how >= 0.8) & (how < 0.9), random_words, masked)
    return masked, torch.where(pick, ids, torch.full_like(ids, IGNORE))


def itm_negatives(ids: Tensor, mask: Tensor, rate: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """FLAVA's ITM sampling (torchmultimodal's VLTransform: with probability ``itm_probability``, 0.1 in its
    VLDataModule, a pair's caption is replaced by another sample's): the picked rows pass their captions round
    among themselves in a random cycle, so no caption is in the batch twice (the contrastive loss, which keeps
    every caption as a candidate, meets no copy of a positive's caption). A drawn caption token-identical to the
    row's own (templated captions repeat) still matches: label 1.
    ids [B, L], mask [B, L] -> (ids, mask, itm_labels [B] int64: 1 = match)."""
    b = ids.shape[0]
    picked = torch.nonzero(torch.rand(b, generator=gen) < rate).flatten()
    source = torch.arange(b)
    if picked.numel() >= 2:  # one row alone has no other caption to take
        cycle = picked[torch.randperm(picked.numel(), generator=gen)]
        source[cycle] = cycle.roll(1)
    new_ids, new_mask = ids[source], mask[source]
    same = (new_ids == ids).all(dim=1) & (new_mask == mask).all(dim=1)  # unpicked rows: their own caption
    return new_ids, new_mask, same.long()


def random_patch_mask(b: int, n: int, gen: torch.Generator) -> Tensor:
    """[B, N] bool: FLAVA_IMAGE_MASK of each image's patches, uniformly at random (FLAVA masks blocks)."""
    k = max(1, round(FLAVA_IMAGE_MASK * n))
    order = torch.rand(b, n, generator=gen).argsort(dim=1)
    return torch.zeros(b, n, dtype=torch.bool).scatter_(1, order[:, :k], True)


def codebook_pixels(images: Tensor, size: int) -> Tensor:
    """ImageNet-normalised images [B, 3, H, W] -> the codebook's input [B, 3, size, size]: [0, 1] pixels through
    FLAVA's logit-Laplace map (x * 0.8 + 0.1)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    px = F.interpolate((images * std + mean).clamp(0, 1), size=(size, size), mode="bilinear", align_corners=False)
    return px * (1 - 2 * LOGIT_LAPLACE_EPS) + LOGIT_LAPLACE_EPS


def pair_inputs(batch, grid: int, codebook_px: int, text: TextIds, gen: torch.Generator, itm_rate: float,
                with_codebook: bool) -> dict:
    """A PairBatch -> FlavaForPreTraining.forward's keyword arguments for contrastive + ITM + MMM-text (and
    MMM-image with a codebook; without one, all-ignored MIM labels on unmasked images: see the module docstring)."""
    images, b = batch.image.images, batch.batch_size
    ids, mask, itm = itm_negatives(batch.text.full_ids, batch.text.full_mask, itm_rate, gen)
    masked, labels = mlm_targets(ids, mask, text, gen)
    ids, attention = with_cls(ids, mask, text.cls)
    x = {"input_ids": ids, "input_ids_masked": with_cls(masked, mask, text.cls)[0], "attention_mask": attention,
         "mlm_labels": F.pad(labels, (1, 0), value=IGNORE), "pixel_values": images, "itm_labels": itm,
         "return_loss": True}
    if with_codebook:
        x["bool_masked_pos"] = random_patch_mask(b, grid * grid, gen)
        x["codebook_pixel_values"] = codebook_pixels(images, codebook_px)
    else:
        x["bool_masked_pos"] = torch.zeros(b, grid * grid, dtype=torch.bool)
        x["mim_labels"] = torch.full((b, grid * grid), IGNORE, dtype=torch.long)
    return x


def text_inputs(batch, text: TextIds, gen: torch.Generator) -> dict:
    """A TextBatch -> keyword arguments of a text-only MLM forward (no input_ids: the unmasked pass has nothing to
    encode, no pixels: no contrastive, ITM or multimodal encoder)."""
    masked, labels = mlm_targets(batch.full_ids, batch.full_mask, text, gen)
    masked, attention = with_cls(masked, batch.full_mask, text.cls)
    return {"input_ids_masked": masked, "attention_mask": attention, "return_loss": True,
            "mlm_labels": F.pad(labels, (1, 0), value=IGNORE)}


@dataclasses.dataclass
class StepInputs:
    """One loader step's {stream name: batch} -> {stream name: FlavaForPreTraining.forward keyword arguments}: the
    pair stream through pair_inputs, the text stream through text_inputs, all drawing from ``gen``."""

    grid: int  # patches per image side
    codebook_px: int
    text: TextIds
    gen: torch.Generator
    itm_rate: float
    with_codebook: bool

    def __call__(self, batches: dict) -> dict[str, dict]:
        return {name: pair_inputs(b, self.grid, self.codebook_px, self.text, self.gen, self.itm_rate,
                                  self.with_codebook)
                if name == "pair" else text_inputs(b, self.text, self.gen) for name, b in batches.items()}
