"""GLUE as a suite: every task of a GLUE folder, each fine-tuned over a small learning-rate grid.

BERT's protocol: fine-tune from the same pretrained encoder once per learning rate in {2, 3, 4, 5}e-5 (3 epochs,
batch 32) and report the best dev result. "Best" is judged on the mean of the task's GLUE metrics (accuracy and
F1 for MRPC / QQP, Pearson and Spearman for STS-B), so a run is never picked on one half of its cell.

The folder is the GLUE download (``download_glue_data.py``): ``<glue>/<Task>/train.tsv`` and ``dev.tsv``
(``dev_matched.tsv`` for MNLI), task folders named ``CoLA SST-2 MRPC QQP STS-B MNLI QNLI RTE WNLI``; JSON-lines
exports (``train.jsonl`` + ``validation.jsonl`` / ``dev.jsonl``) are read too. Every fine-tune starts from a fresh
copy of the encoder; the caller's model is never changed.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from momo_ds.eval.text_cls import GLUE_TASKS, finetune_text, glue_task_name

# The language columns of the paper's Table 2 (in its order), then CoLA, which GLUE reports beside them.
PAPER_GLUE = ("sst2", "rte", "mrpc", "qqp", "mnli", "qnli", "stsb", "cola")
GLUE_LRS = (2e-5, 3e-5, 4e-5, 5e-5)
FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI",
           "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}


def glue_files(glue_dir: str | Path, task: str) -> Optional[tuple[Path, Path]]:
    """(train, dev) files of ``task`` under a GLUE folder, or None when the folder lacks the task."""
    task = glue_task_name(task)
    root = Path(glue_dir)
    for folder in (root / FOLDERS[task], root / task):
        for train, dev in ((folder / "train.tsv", folder / GLUE_TASKS[task].dev_file),
                           (folder / "train.jsonl", folder / "validation.jsonl"),
                           (folder / "train.jsonl", folder / "dev.jsonl")):
            if train.is_file() and dev.is_file():
                return train, dev
    return None


def _selection(metrics: dict[str, float], task: str) -> float:
    return sum(metrics[m] for m in GLUE_TASKS[task].metrics) / len(GLUE_TASKS[task].metrics)


def finetune_grid(encoder: torch.nn.Module, tokenizer, task: str, train: Path, dev: Path, *,
                  lrs: Sequence[float] = GLUE_LRS, say: Callable[[str], None] = print,
                  **kwargs) -> dict[str, object]:
    """One task over the grid -> the best run's metrics (``lr`` = its learning rate) and ``grid`` (every run)."""
    grid: dict[str, dict[str, float]] = {}
    for lr in lrs:
        t = time.perf_counter()
        metrics = finetune_text(copy.deepcopy(encoder), tokenizer, GLUE_TASKS[task], train, dev, lr=lr, **kwargs)
        grid[f"{lr:g}"] = metrics
        shown = " ".join(f"{m} {metrics[m]:.1f}" for m in GLUE_TASKS[task].metrics)
        say(f"glue {task} lr {lr:g}: {shown} ({time.perf_counter() - t:.0f} s)")
    best = max(grid, key=lambda lr: _selection(grid[lr], task))
    return {**grid[best], "lr": float(best), "grid": grid}


def run_glue_suite(encoder: torch.nn.Module, tokenizer, glue_dir: str | Path, *,
                   tasks: Sequence[str] = PAPER_GLUE, lrs: Sequence[float] = GLUE_LRS,
                   say: Callable[[str], None] = print, **kwargs) -> dict[str, object]:
    """Every task of ``tasks`` the folder holds -> {task: best metrics + grid}; ``missing`` lists the others.
    kwargs go to :func:`momo_ds.eval.text_cls.finetune_text` (epochs, batch_size, max_len, seed, device)."""
    root = Path(glue_dir)
    if not root.is_dir():
        raise ValueError(f"GLUE folder not found: {root}")
    names = [glue_task_name(t) for t in tasks]
    unknown = [t for t in names if t not in GLUE_TASKS]
    if unknown:
        raise ValueError(f"unknown GLUE task(s) {unknown}; valid: {', '.join(GLUE_TASKS)}")
    found = {t: glue_files(root, t) for t in names}
    if not any(found.values()):
        raise ValueError(f"{root}: none of the GLUE tasks {', '.join(FOLDERS[t] for t in names)} found "
                         "(expected <Task>/train.tsv + dev.tsv, as the GLUE download lays them out)")
    results: dict[str, object] = {}
    for task, files in found.items():
        if files is not None:
            results[task] = finetune_grid(encoder, tokenizer, task, *files, lrs=lrs, say=say, **kwargs)
    results["missing"] = [t for t, files in found.items() if files is None]
    return results
