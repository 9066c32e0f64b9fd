"""Text classification / regression fine-tuning on GLUE files: the real GLUE TSV layouts, or JSONL.

Each task reads its columns from the real GLUE download (MRPC's ``Quality``/``#1 String``/``#2 String``, QQP's
``is_duplicate``, MNLI's ``gold_label``, headerless CoLA, ...) and also the ``sentence1``/``label`` style names of
Hugging Face exports (JSONL, or a TSV with those headers). Labels map to ids through a fixed per-task list, so train
and dev files agree on the class order even when one of them lacks a class.

The encoder reads [CLS] + tokens; a sentence pair is joined with the tokenizer's separator text
(`` [SEP] ``), and the second segment's positions continue after the first. Metrics follow GLUE: accuracy,
F1 (MRPC, QQP), Matthews correlation (CoLA), Pearson/Spearman (STS-B).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from momo_ds.eval.metrics import accuracy, binary_f1, matthews_corr, pearson, spearman

Record = tuple[int, dict[str, Any]]  # (line number in the file, column -> value)


@dataclass(frozen=True)
class Columns:
    """Where one file layout keeps the first text, the optional second text and the label."""
    text_a: str
    text_b: Optional[str]
    label: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c in (self.text_a, self.text_b, self.label) if c)


@dataclass(frozen=True)
class GlueTask:
    layouts: tuple[Columns, ...]  # tried in order; the first is the real GLUE TSV layout
    labels: tuple[str, ...]  # class names in id order; () = regression
    metrics: tuple[str, ...]
    headerless: tuple[str, ...] = ()  # column names of a GLUE TSV that has no header row (CoLA)
    dev_file: str = "dev.tsv"  # the validation file's name in the GLUE download

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
GLUE_TASKS = {
    "cola": GlueTask((Columns("sentence", None, "label"),), BINARY, ("mcc",),
                     headerless=("source", "label", "original_label", "sentence")),
    "sst2": GlueTask((Columns("sentence", None, "label"),), BINARY, ("acc",)),
    "mrpc": GlueTask((Columns("#1 String", "#2 String", "Quality"), Columns("sentence1", "sentence2", "label")),
                     BINARY, ("acc", "f1")),
    "qqp": GlueTask((Columns("question1", "question2", "is_duplicate"), Columns("question1", "question2", "label")),
                    BINARY, ("acc", "f1")),
    "stsb": GlueTask((Columns("sentence1", "sentence2", "score"), Columns("sentence1", "sentence2", "label")),
                     (), ("pearson", "spearman")),
    "mnli": GlueTask((Columns("sentence1", "sentence2", "gold_label"), Columns("premise", "hypothesis", "label")),
                     ("entailment", "neutral", "contradiction"), ("acc",), dev_file="dev_matched.tsv"),
    "qnli": GlueTask((Columns("question", "sentence", "label"),), ENTAILMENT, ("acc",)),
    "rte": GlueTask((Columns("sentence1", "sentence2", "label"),), ENTAILMENT, ("acc",)),
    "wnli": GlueTask((Columns("sentence1", "sentence2", "label"),), BINARY, ("acc",)),
}


def glue_task_name(name: str) -> str:
    """'SST-2', 'STS-B', 'MRPC' (the GLUE folder names) -> the GLUE_TASKS key."""
    return name.lower().replace("-", "")


def _read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row. QUOTE_NONE: GLUE text holds unescaped quotes; utf-8-sig:
    MRPC's files start with a byte-order mark that would otherwise stick to the ``Quality`` column name."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(reader.line_num, row) for row in reader if row]


def _pick(task: GlueTask, names: Sequence[str]) -> Optional[Columns]:
    return next((c for c in task.layouts if set(c.names) <= set(names)), None)


def _missing(path: Path, task: GlueTask, found: Sequence[str]) -> ValueError:
    first = task.layouts[0]
    also = [list(c.names) for c in task.layouts[1:]]
    if task.headerless:
        also.append(f"{len(task.headerless)} fields per row with no header ({', '.join(task.headerless)})")
    hint = f" (also accepted: {'; '.join(map(str, also))})" if also else ""
    return ValueError(f"{path}: missing column(s) {[c for c in first.names if c not in found]}{hint}; "
                      f"found {list(found)}")


def _tsv_records(path: Path, task: GlueTask) -> tuple[list[Record], Columns]:
    rows = _read_tsv(path)
    if not rows:
        raise ValueError(f"{path}: no examples")
    header, body = rows[0][1], rows[1:]
    cols = _pick(task, header)
    if cols is None and task.headerless and len(header) == len(task.headerless):
        header, body, cols = list(task.headerless), rows, _pick(task, task.headerless)
    if cols is None:
        raise _missing(path, task, header)
    return [(n, dict(zip(header, row))) for n, row in body], cols


def _jsonl_records(path: Path, task: GlueTask) -> tuple[list[Record], Columns]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
        records.append((n, row))
    if not records:
        raise ValueError(f"{path}: no examples")
    cols = _pick(task, records[0][1])
    if cols is None:
        raise _missing(path, task, sorted(records[0][1]))
    return records, cols


def label_value(raw: Any, task: GlueTask) -> int | float:
    """A class id from the task's fixed label list (a name, or already an id as HF exports write them), or the
    float score of a regression task."""
    text = str(raw).strip()
    if not task.labels:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"score {text!r} is not a number") from None
    if text in task.labels:
        return task.labels.index(text)
    if text.isdigit() and int(text) < len(task.labels):
        return int(text)
    raise ValueError(f"label {text!r} is not one of {', '.join(task.labels)}")


def _not_found(path: Path, task: GlueTask) -> ValueError:
    hint = (f" (this task's GLUE validation file is {task.dev_file})"
            if path.name.startswith("dev") and path.name != task.dev_file else "")
    return ValueError(f"text classification data not found: {path}{hint}")


def read_examples(path: str | Path, task: GlueTask) -> tuple[list[str], list[Optional[str]], Tensor]:
    """(texts_a, texts_b, labels [N]: class ids or float scores) from a GLUE TSV or a JSONL file; one-line errors
    that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise _not_found(path, task)
    try:
        records, cols = (_jsonl_records if path.suffix == ".jsonl" else _tsv_records)(path, task)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    a, b, y = [], [], []
    for n, row in records:
        absent = [c for c in cols.names if row.get(c) is None]
        if absent:
            raise ValueError(f"{path}:{n}: row has no {absent[0]!r} field ({len(row)} fields)")
        try:
            y.append(label_value(row[cols.label], task))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        a.append(str(row[cols.text_a]))
        b.append(str(row[cols.text_b]) if cols.text_b else None)
    if not a:
        raise ValueError(f"{path}: no examples")
    return a, b, torch.tensor(y)


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
    tr_a, tr_b, ytr = read_examples(train_path, task)
    va_a, va_b, yva = read_examples(val_path, task)
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
