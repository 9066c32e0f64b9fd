"""Text classification / regression fine-tuning in GLUE layout (TSV with a header, or JSONL).

The encoder reads [CLS] + tokens; a sentence pair is joined with the tokenizer's separator text
(`` [SEP] ``), and the second segment's positions continue after the first. Metrics follow GLUE: accuracy,
F1 (MRPC, QQP), Matthews correlation (CoLA), Pearson/Spearman (STS-B).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from momo_ds.eval.metrics import accuracy, binary_f1, matthews_corr, pearson, spearman


@dataclass(frozen=True)
class GlueTask:
    text_a: str
    text_b: Optional[str]
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]


GLUE_TASKS = {
    "cola": GlueTask("sentence", None, 2, ("mcc",)),
    "sst2": GlueTask("sentence", None, 2, ("acc",)),
    "mrpc": GlueTask("sentence1", "sentence2", 2, ("acc", "f1")),
    "qqp": GlueTask("question1", "question2", 2, ("acc", "f1")),
    "stsb": GlueTask("sentence1", "sentence2", 1, ("pearson", "spearman")),
    "mnli": GlueTask("premise", "hypothesis", 3, ("acc",)),
    "qnli": GlueTask("question", "sentence", 2, ("acc",)),
    "rte": GlueTask("sentence1", "sentence2", 2, ("acc",)),
    "wnli": GlueTask("sentence1", "sentence2", 2, ("acc",)),
}


def read_examples(path: str | Path, task: GlueTask) -> tuple[list[str], list[Optional[str]], list[str]]:
    """(texts_a, texts_b, raw labels) from a TSV with a header row or a JSONL file; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"text classification data not found: {path}")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{path}: no examples")
    needed = [c for c in (task.text_a, task.text_b, "label") if c]
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(rows[0])}")
    return ([str(r[task.text_a]) for r in rows], [str(r[task.text_b]) if task.text_b else None for r in rows],
            [str(r["label"]) for r in rows])


def encode_examples(tokenizer, a: list[str], b: list[Optional[str]], max_len: int) -> tuple[Tensor, Tensor]:
    """-> ids [N, L] right-padded with the pad id, mask [N, L] bool."""
    texts = [x if y is None else f"{x} [SEP] {y}" for x, y in zip(a, b)]
    seqs = [ids[:max_len] or [tokenizer.pad_id] for ids in tokenizer.encode(texts)]
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    return ids, mask


def score(pred: Tensor, target: Tensor, metrics: tuple[str, ...]) -> dict[str, float]:
    fns = {"acc": accuracy, "f1": binary_f1, "mcc": matthews_corr, "pearson": pearson, "spearman": spearman}
    return {m: fns[m](pred, target) for m in metrics}


class TextClassifier(torch.nn.Module):
    """Encoder + linear head on the final [CLS] state."""

    def __init__(self, encoder, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.cfg.embed_dim, num_labels)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask: [B, L] -> logits [B, num_labels]."""
        return self.head(self.encoder.encode_text(ids, None, mask)[0][:, 0])


def finetune_text(encoder, tokenizer, task: GlueTask, train_path, val_path, *, epochs: int = 3, lr: float = 5e-5,
                  batch_size: int = 32, max_len: int = 128, seed: int = 0,
                  device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Fine-tune encoder + head on the train file, report GLUE metrics on the validation file."""
    tr_a, tr_b, tr_y = read_examples(train_path, task)
    va_a, va_b, va_y = read_examples(val_path, task)
    if task.num_labels == 1:
        ytr, yva = torch.tensor([float(y) for y in tr_y]), torch.tensor([float(y) for y in va_y])
    else:
        names = sorted(set(tr_y) | set(va_y))
        index = {n: i for i, n in enumerate(names)}
        ytr, yva = torch.tensor([index[y] for y in tr_y]), torch.tensor([index[y] for y in va_y])
    xtr, mtr = encode_examples(tokenizer, tr_a, tr_b, max_len)
    xva, mva = encode_examples(tokenizer, va_a, va_b, max_len)
    torch.manual_seed(seed)
    model = TextClassifier(encoder, task.num_labels).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(batch_size):
            logits = model(xtr[idx].to(device), mtr[idx].to(device))
            y = ytr[idx].to(device)
            loss = (torch.nn.functional.mse_loss(logits[:, 0], y) if task.num_labels == 1
                    else torch.nn.functional.cross_entropy(logits, y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xva[i:i + 256].to(device), mva[i:i + 256].to(device)).cpu()
                            for i in range(0, len(xva), 256)])
    pred = logits[:, 0] if task.num_labels == 1 else logits.argmax(1)
    out = score(pred, yva, task.metrics)
    out.update(train_n=float(len(xtr)), val_n=float(len(xva)))
    return out
