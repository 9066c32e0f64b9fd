"""Zero-shot image<->text retrieval with the shared encoder used as both image and text encoder."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from momo_ds import distributed as mdist
from momo_ds.batch import PairBatch
from momo_ds.eval.metrics import retrieval_recall


def _repeats(images: Tensor, previous: Optional[Tensor]) -> Tensor:
    """[B] bool: row i holds the same pixels as the row before it (row 0: as ``previous``, the last image of the
    preceding batch)."""
    same = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    if images.shape[0] > 1:
        same[1:] = (images[1:] == images[:-1]).flatten(1).all(dim=1)
    if previous is not None and images.shape[0]:
        same[0] = torch.equal(images[0], previous)
    return same


@torch.no_grad()
def pair_features(model, batches: Iterable[PairBatch], device: torch.device) -> tuple[Tensor, Tensor]:
    """Contrastive embeddings of every pair this rank sees, gathered over ranks -> (img [N, P], txt [N, P]).

    The captions of one image arrive as consecutive rows with the same pixels (a pair sample holds all its
    captions), possibly split over two batches. Each image is encoded once and its embedding copied to its other
    rows, so they are bitwise equal, as :func:`retrieval_metrics` needs to count them as one image; an image
    encoded in two batches of different sizes could differ in the last bits.
    """
    imgs, txts = [], []
    last_image: Optional[Tensor] = None
    last_feature: Optional[Tensor] = None
    for b in batches:
        images = b.image.images
        repeats = _repeats(images, last_image)
        table = model.image_features(images[~repeats].to(device)).float() if (~repeats).any() else None
        if last_feature is not None:
            table = last_feature[None] if table is None else torch.cat([last_feature[None], table])
        index = torch.cumsum((~repeats).long(), 0) - (0 if last_feature is not None else 1)
        feats = table.index_select(0, index.to(table.device))
        imgs.append(feats)
        last_image, last_feature = images[-1], feats[-1]
        txts.append(model.text_features(b.text.full_ids.to(device), b.text.full_mask.to(device)).float())
    if not imgs:
        raise ValueError("retrieval: the pair split is empty")
    return mdist.gather_variable(torch.cat(imgs)), mdist.gather_variable(torch.cat(txts))


def retrieval_metrics(img: Tensor, txt: Tensor, chunk: int = 1024) -> dict[str, float]:
    """Recall@1/5/10 both ways, in percent (``tr@1_pct`` ...; ``chance_r1_pct`` = 100 / images). Rows with
    identical image embeddings (the same image captioned several times, as in COCO's 5 captions per image) count
    as one image whose texts are all correct."""
    uniq, inverse = torch.unique(img, dim=0, return_inverse=True)
    out = retrieval_recall(uniq, txt, inverse, ks=(1, 5, 10), chunk=chunk)
    out.update(images=float(uniq.shape[0]), texts=float(txt.shape[0]),
               chance_r1_pct=100.0 / max(1, uniq.shape[0]))
    return out


def evaluate_retrieval(model, batches: Iterable[PairBatch], device: torch.device) -> dict[str, float]:
    img, txt = pair_features(model, batches, device)
    return retrieval_metrics(img, txt)
