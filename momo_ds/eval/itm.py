"""Held-out image-text matching: does the ITM head tell a pair's own caption from other captions?

Every held-out pair is scored three times by the ITM head (class 1 = match, as trained): the positive (its image
and caption), a random negative (its image with a caption drawn uniformly from the other pairs) and a hard negative
(its image with the caption whose contrastive embedding is most similar to the image's). Accuracies are balanced
(mean of the accuracy on positives and on negatives), so chance is 50 % and a head that always answers "match"
scores exactly 50.

A negative must be an (image, caption) combination the split does not contain. An image with several captions is
several rows with bitwise-equal pixels, so its other captions are excluded; so is a token-identical caption of
another image (templated or short captions repeat): image + that caption is the same joint input as a positive.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from momo_ds.batch import PairBatch


@dataclass
class HeldOutPairs:
    """What the first pass over the split keeps: identities, caption tokens and embeddings, not pixels.

    image_group: [N] int64 per row, equal for rows with bitwise-equal pixels (numbered in order of appearance)
    text_group:  [N] int64 per row, equal for rows with identical caption tokens
    image_emb:   [G, P] contrastive embedding of each distinct image (row g = image_group g)
    text_emb:    [N, P] contrastive embedding of each row's caption
    ids, mask:   [N, L] each row's caption, right-padded with the pad id (mask True on real tokens)
    positive:    [N] int64 ITM prediction of each row's own pair
    """

    image_group: Tensor
    text_group: Tensor
    image_emb: Tensor
    text_emb: Tensor
    ids: Tensor
    mask: Tensor
    positive: Tensor

    @property
    def rows(self) -> int:
        return self.image_group.shape[0]

    def texts(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Captions of ``rows`` -> (ids, mask) [n, L'], trimmed to their longest caption."""
        ids, mask = self.ids.index_select(0, rows), self.mask.index_select(0, rows)
        longest = int(mask.sum(dim=1).max())
        return ids[:, :longest], mask[:, :longest]


def _pixel_digest(image: Tensor) -> bytes:
    """128-bit hash of an image's exact bytes: identifies repeated images without keeping their pixels."""
    return hashlib.blake2b(image.contiguous().cpu().numpy(), digest_size=16).digest()


def _image_groups(images: Tensor, seen: dict[bytes, int]) -> tuple[list[int], list[int]]:
    """Group ids of a batch's images (new images numbered on from ``seen``, which is updated) and the rows that
    introduce a new image, so that each image is embedded once."""
    groups, new = [], []
    for i, image in enumerate(images):
        key = _pixel_digest(image)
        if key not in seen:
            seen[key] = len(seen)
            new.append(i)
        groups.append(seen[key])
    return groups, new


def _pad_cat(parts: list[Tensor], value) -> Tensor:
    """[B_k, L_k] batches -> [sum B_k, max L_k], right-padded with ``value``."""
    longest = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, longest - p.shape[1]), value=value) for p in parts])


@torch.no_grad()
def collect_pairs(model, batches: Iterable[PairBatch], device: torch.device) -> HeldOutPairs:
    """First pass: group rows by image and caption, embed each distinct image once and every caption, and score
    the positives (full images and captions, no masking)."""
    images_seen: dict[bytes, int] = {}
    texts_seen: dict[tuple[int, ...], int] = {}
    image_group, text_group, image_emb, text_emb, ids, masks, positive = [], [], [], [], [], [], []
    for b in batches:
        images, full_ids, full_mask = b.image.images, b.text.full_ids, b.text.full_mask
        groups, new = _image_groups(images, images_seen)
        if new:
            image_emb.append(model.image_features(images[new].to(device)).float())
        image_group += groups
        text_group += [texts_seen.setdefault(tuple(t[m].tolist()), len(texts_seen))
                       for t, m in zip(full_ids, full_mask)]
        text_emb.append(model.text_features(full_ids.to(device), full_mask.to(device)).float())
        positive.append(model.match_logits(images.to(device), full_ids.to(device), full_mask.to(device))
                        .argmax(dim=1).cpu())
        ids.append(full_ids)
        masks.append(full_mask)
    if not ids:
        raise ValueError("itm: the pair split is empty")
    return HeldOutPairs(torch.tensor(image_group), torch.tensor(text_group), torch.cat(image_emb),
                        torch.cat(text_emb), _pad_cat(ids, model.cfg.pad_token_id), _pad_cat(masks, False),
                        torch.cat(positive))


class _Contained:
    """Membership test for the (image, caption) combinations the split contains (not valid negatives)."""

    def __init__(self, image_group: Tensor, text_group: Tensor):
        self.texts = int(text_group.max()) + 1
        self.keys = torch.unique(image_group * self.texts + text_group)
        self._check_negatives_exist(image_group, text_group)

    def __call__(self, image_group: Tensor, text_group: Tensor) -> Tensor:
        """Broadcastable image and caption groups -> bool, True where the split contains the pair."""
        return torch.isin(image_group * self.texts + text_group, self.keys.to(image_group.device))

    def _check_negatives_exist(self, image_group: Tensor, text_group: Tensor) -> None:
        """Every image needs a row whose caption is none of its own: count, per image, the rows that are."""
        rows_per_text = torch.bincount(text_group, minlength=self.texts)
        images = int(image_group.max()) + 1
        own = torch.zeros(images, dtype=torch.long).index_add_(0, self.keys // self.texts,
                                                               rows_per_text[self.keys % self.texts])
        if bool((own == image_group.shape[0]).any()):
            raise ValueError("itm: an image has no negative caption: every caption in the split is one of its own")


def _random_negatives(pairs: HeldOutPairs, contained: _Contained, generator: torch.Generator) -> Tensor:
    """[N] the row whose caption is each row's random negative, uniform over the rows whose caption is not one of
    its image's. Rejection sampling: draw a row for every pending row at once, in row order, keep the valid ones
    and redraw the rest, until none is pending."""
    n = pairs.rows
    negative = torch.empty(n, dtype=torch.long)
    pending = torch.arange(n)
    while pending.numel():
        negative[pending] = torch.randint(n, (pending.numel(),), generator=generator)
        pending = pending[contained(pairs.image_group[pending], pairs.text_group[negative[pending]])]
    return negative


def _hard_negatives(pairs: HeldOutPairs, contained: _Contained, chunk: int = 1024) -> Tensor:
    """[N] the row whose caption is each row's hard negative: the caption most similar to its image (contrastive
    embeddings) among those that are not its image's. ``chunk`` images at a time: never G x N at once."""
    text_group = pairs.text_group.to(pairs.text_emb.device)
    best = []
    for s in range(0, pairs.image_emb.shape[0], chunk):
        sim = pairs.image_emb[s:s + chunk] @ pairs.text_emb.T  # [c, N]
        images = torch.arange(s, s + sim.shape[0], device=sim.device)
        best.append(sim.masked_fill(contained(images[:, None], text_group[None, :]), float("-inf")).argmax(dim=1))
    return torch.cat(best).cpu().index_select(0, pairs.image_group)


def draw_negatives(pairs: HeldOutPairs, seed: int = 0, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """-> (random [N], hard [N]) negative caption rows. The random draws come from a generator of their own,
    seeded by ``seed``: reproducible, and no other evaluation's random stream moves."""
    contained = _Contained(pairs.image_group, pairs.text_group)
    generator = torch.Generator().manual_seed(seed)
    return _random_negatives(pairs, contained, generator), _hard_negatives(pairs, contained, chunk)


@torch.no_grad()
def score_negatives(model, batches: Iterable[PairBatch], pairs: HeldOutPairs, random_rows: Tensor,
                    hard_rows: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Second pass (pixels again, rather than keeping N images): each row's image with its random and its hard
    negative caption, encoded together -> ITM predictions (random [N], hard [N])."""
    random_pred, hard_pred = [], []
    start = 0
    for b in batches:
        n = b.batch_size
        if start + n > pairs.rows:
            _not_reiterable(pairs.rows)
        rows = torch.arange(start, start + n)
        start += n
        ids, mask = pairs.texts(torch.cat([random_rows[rows], hard_rows[rows]]))
        images = b.image.images.to(device)
        pred = model.match_logits(torch.cat([images, images]), ids.to(device), mask.to(device)).argmax(dim=1).cpu()
        random_pred.append(pred[:n])
        hard_pred.append(pred[n:])
    if start != pairs.rows:
        _not_reiterable(pairs.rows)
    return torch.cat(random_pred), torch.cat(hard_pred)


def _not_reiterable(first: int) -> None:
    raise ValueError(f"itm: the second pass over the pairs did not give the first pass's {first} rows: the batches "
                     "must yield the same rows again (an evaluation loader or a list, not a one-shot iterator)")


def _pct(hits: Tensor) -> float:
    return 100.0 * int(hits.sum()) / hits.numel()


def itm_metrics(positive: Tensor, random_neg: Tensor, hard_neg: Tensor) -> dict[str, float]:
    """ITM predictions [N] each (1 = match) -> accuracies in percent; balanced = mean of positive and negative
    accuracy (chance 50)."""
    pos, rnd, hard = _pct(positive == 1), _pct(random_neg == 0), _pct(hard_neg == 0)
    return {"itm_random_bacc_pct": (pos + rnd) / 2, "itm_hard_bacc_pct": (pos + hard) / 2, "itm_pos_acc_pct": pos,
            "itm_random_neg_acc_pct": rnd, "itm_hard_neg_acc_pct": hard, "pairs": float(positive.numel())}


def evaluate_itm(model, batches: Iterable[PairBatch], device: torch.device, seed: int = 0,
                 chunk: int = 1024) -> dict[str, float]:
    """Held-out ITM accuracy of ``model`` (a MoMo with a trained ITM head) on every pair ``batches`` yields.

    ``batches`` is read twice (an evaluation loader or a list). Single process: the caller gives this process the
    whole split (no gathering over ranks).
    """
    pairs = collect_pairs(model, batches, device)
    random_rows, hard_rows = draw_negatives(pairs, seed, chunk)
    random_pred, hard_pred = score_negatives(model, batches, pairs, random_rows, hard_rows, device)
    return itm_metrics(pairs.positive, random_pred, hard_pred)
