"""Evaluation metrics: retrieval recall (chunked), classification accuracy/F1/Matthews, Pearson/Spearman."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


@torch.no_grad()
def retrieval_recall(img: Tensor, txt: Tensor, txt_image: Optional[Tensor] = None, ks: Sequence[int] = (1, 5, 10),
                     chunk: int = 1024) -> dict[str, float]:
    """Zero-shot retrieval recall@k in percent, both directions: keys ``tr@{k}_pct`` and ``ir@{k}_pct`` (the
    suffix says the unit, so 0.99 reads as 0.99 %, not 99 %).

    img: [Ni, D] and txt: [Nt, D] L2-normalised embeddings; ``txt_image[j]`` is the index of the image that
    text j describes (default: ``arange``, one text per image). TR@k: fraction of images with at least one of
    their texts among the k most similar texts; IR@k: fraction of texts whose image is among the k most similar
    images. Similarities are computed ``chunk`` rows at a time, so 25k x 25k candidates never materialise at once.
    """
    ni, nt = img.shape[0], txt.shape[0]
    if ni == 0 or nt == 0:
        raise ValueError(f"retrieval needs at least one image and one text (got {ni} images, {nt} texts)")
    if txt_image is None:
        if ni != nt:
            raise ValueError(f"{ni} images but {nt} texts: pass txt_image to say which image each text describes")
        txt_image = torch.arange(nt, device=txt.device)
    txt_image = txt_image.to(txt.device)
    kmax = max(ks)
    tr_rank = torch.empty(ni, dtype=torch.long, device=img.device)  # best rank of a correct text per image
    for s in range(0, ni, chunk):
        sim = img[s:s + chunk] @ txt.T  # [c, Nt]
        correct = txt_image[None, :] == torch.arange(s, min(s + chunk, ni), device=txt.device)[:, None]
        top = sim.topk(min(kmax, nt), dim=1).indices  # [c, k]
        hit = correct.gather(1, top)  # [c, k]
        first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], kmax, dtype=torch.long))
        tr_rank[s:s + chunk] = first
    ir_rank = torch.empty(nt, dtype=torch.long, device=txt.device)
    for s in range(0, nt, chunk):
        sim = txt[s:s + chunk] @ img.T  # [c, Ni]
        top = sim.topk(min(kmax, ni), dim=1).indices
        hit = top == txt_image[s:s + chunk, None]
        ir_rank[s:s + chunk] = torch.where(hit.any(1), hit.float().argmax(1),
                                           torch.full_like(hit[:, 0], kmax, dtype=torch.long))
    out = {}
    for k in ks:
        out[f"tr@{k}_pct"] = 100.0 * float((tr_rank < k).float().mean())
        out[f"ir@{k}_pct"] = 100.0 * float((ir_rank < k).float().mean())
    return out


def accuracy(pred: Tensor, target: Tensor) -> float:
    return 100.0 * float((pred == target).float().mean())


def binary_f1(pred: Tensor, target: Tensor) -> float:
    tp = float(((pred == 1) & (target == 1)).sum())
    fp = float(((pred == 1) & (target == 0)).sum())
    fn = float(((pred == 0) & (target == 1)).sum())
    return 100.0 * (2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0)


def matthews_corr(pred: Tensor, target: Tensor) -> float:
    tp = float(((pred == 1) & (target == 1)).sum())
    tn = float(((pred == 0) & (target == 0)).sum())
    fp = float(((pred == 1) & (target == 0)).sum())
    fn = float(((pred == 0) & (target == 1)).sum())
    den = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return 100.0 * ((tp * tn - fp * fn) / den if den > 0 else 0.0)


def pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return 100.0 * (float((x * y).sum()) / den if den > 0 else 0.0)


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    x = x.double()
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    uniq, inv = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(ranks))
    return (sums / counts)[inv]


def spearman(x: Tensor, y: Tensor) -> float:
    return pearson(_ranks(x), _ranks(y))
