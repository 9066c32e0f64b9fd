"""Linear probe: frozen [CLS] features -> one linear layer trained with full-batch L-BFGS (cross-entropy + L2)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from momo_ds import distributed as mdist
from momo_ds.batch import ImageBatch
from momo_ds.eval.metrics import accuracy


@torch.no_grad()
def probe_features(model, batches: Iterable[ImageBatch], device: torch.device) -> tuple[Tensor, Tensor]:
    """Final-norm [CLS] features and labels of a labelled image split, gathered over ranks."""
    feats, labels = [], []
    for b in batches:
        if b.labels is None:
            raise ValueError("linear probe: the image split has no class labels ('cls' members)")
        feats.append(model.cls_features(b.images.to(device)).float())
        labels.append(b.labels.to(device))
    if not feats:
        raise ValueError("linear probe: the image split is empty")
    return mdist.gather_variable(torch.cat(feats)), mdist.gather_variable(torch.cat(labels))


def train_linear_probe(x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-4,
                       steps: int = 100) -> torch.nn.Linear:
    """x: [N, D] standardised features, y: [N] labels -> trained Linear(D, num_classes) (deterministic)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def linear_probe(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], weight_decay: float = 1e-4) -> dict:
    """Top-1 accuracy (%) of a linear classifier on frozen features; chance = 100 / most-frequent-class share."""
    (xtr, ytr), (xva, yva) = train, val
    if len(xtr) == 0 or len(xva) == 0:
        raise ValueError("linear probe: empty train or validation split")
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    num_classes = int(max(ytr.max(), yva.max())) + 1
    with torch.enable_grad():
        head = train_linear_probe((xtr - mean) / std, ytr, num_classes, weight_decay)
    with torch.no_grad():
        pred = head((xva - mean) / std).argmax(1)
        train_pred = head((xtr - mean) / std).argmax(1)
    majority = float(torch.bincount(yva, minlength=num_classes).max()) / len(yva)
    return {"top1": accuracy(pred, yva), "train_top1": accuracy(train_pred, ytr),
            "classes": float(num_classes), "chance_top1": 100.0 * majority, "train_n": float(len(xtr)),
            "val_n": float(len(xva))}
