"""Zero-shot image<->text retrieval with the shared encoder used as both image and text encoder."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from momo_ds import distributed as mdist
from momo_ds.batch import PairBatch
from momo_ds.eval.metrics import retrieval_recall


@torch.no_grad()
def pair_features(model, batches: Iterable[PairBatch], device: torch.device) -> tuple[Tensor, Tensor]:
    """Contrastive embeddings of every pair this rank sees, gathered over ranks -> (img [N, P], txt [N, P])."""
    imgs, txts = [], []
    for b in batches:
        imgs.append(model.image_features(b.image.images.to(device)).float())
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
