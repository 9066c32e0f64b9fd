"""Evaluation tasks on an exported encoder: retrieval, image-text matching, linear probe, text classification;
table + JSON report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from momo_ds import distributed as mdist
from momo_ds.eval.encoder import LoadedEncoder, load_encoder

TASKS = ("retrieval", "itm", "linear_probe", "glue")
DEFAULT_MAX_LEN = 128  # GLUE's usual fine-tuning length


def _tokenizer(enc: LoadedEncoder, override: Optional[str]):
    from momo_ds.data import load_tokenizer

    name = override or enc.tokenizer
    if not name:
        raise ValueError("no tokenizer recorded with the encoder: pass --tokenizer")
    return load_tokenizer(name)


def text_max_len(enc: LoadedEncoder, requested: Optional[int] = None) -> int:
    """Tokens per GLUE / retrieval text: ``requested``, else min(128, the encoder's position table), so the tiny
    preset (64 positions) works without flags. More than the table holds cannot be embedded: one-line error."""
    limit = enc.config.max_text_len
    if requested is None:
        return min(DEFAULT_MAX_LEN, limit)
    if requested > limit:
        raise ValueError(f"--max_len {requested} exceeds the encoder's max_text_len {limit}")
    if requested < 1:
        raise ValueError(f"--max_len must be at least 1, got {requested}")
    return requested


def _loader(enc: LoadedEncoder, urls: Sequence[str], kind: str, tokenizer, batch_size: int, max_len: int,
            split: bool = True):
    """split: this rank's share of ``urls`` (tasks that gather over ranks), else all of them (single-process tasks:
    every rank computes the same result, with no collective to wait on)."""
    from momo_ds.data import build_eval_loader

    rank, world = (mdist.get_rank(), mdist.get_world_size()) if split else (0, 1)
    return build_eval_loader(list(urls), kind, tokenizer=tokenizer, image_size=enc.config.img_size,
                             patch_size=enc.config.patch_size, batch_size=batch_size, max_text_len=max_len,
                             rank=rank, world_size=world)


def check_task(task: str, *, pairs: Sequence[str] = (), train: Sequence[str] = (), val: Sequence[str] = (),
               glue_task: str = "", has_itm_head: bool = True) -> None:
    """The inputs a task needs, checked before any task runs: a typo in the last task of a command should not
    surface only after the first ones have spent their hours. has_itm_head: the encoder's (LoadedEncoder)."""
    from momo_ds.eval.text_cls import GLUE_TASKS, glue_task_name

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task in ("retrieval", "itm") and not pairs:
        raise ValueError(f"{task} needs --pairs (image-text pair shards)")
    if task == "itm" and not has_itm_head:
        raise ValueError("itm: this export has no ITM head (written before encoder exports included it)")
    if task == "linear_probe" and (not train or not val):
        raise ValueError("linear_probe needs --train and --val (labelled image shards)")
    if task != "glue":
        return
    if not glue_task:
        raise ValueError(f"glue needs --glue_task, one of: {', '.join(GLUE_TASKS)}")
    if glue_task_name(glue_task) not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {glue_task!r}; valid: {', '.join(GLUE_TASKS)}")
    if len(train) != 1 or len(val) != 1:
        raise ValueError("glue needs one --train and one --val file (TSV or JSONL)")


def run_task(enc: LoadedEncoder, task: str, *, pairs: Sequence[str] = (), train: Sequence[str] = (),
             val: Sequence[str] = (), glue_task: str = "", tokenizer: Optional[str] = None, batch_size: int = 256,
             max_len: Optional[int] = None, device: torch.device = torch.device("cpu"),
             **glue_kwargs) -> dict[str, float]:
    """One evaluation task; raises ValueError (one line) on an unknown task or missing inputs.

    max_len: tokens per text (retrieval / ITM captions, GLUE inputs); None = :func:`text_max_len`'s default.
    ITM runs as one process on the whole split (see :func:`momo_ds.eval.itm.evaluate_itm`)."""
    from momo_ds.eval.itm import evaluate_itm
    from momo_ds.eval.linear_probe import probe_features, linear_probe
    from momo_ds.eval.retrieval import evaluate_retrieval

    check_task(task, pairs=pairs, train=train, val=val, glue_task=glue_task, has_itm_head=enc.has_itm_head)
    max_len = text_max_len(enc, max_len)
    tok = _tokenizer(enc, tokenizer)
    if task == "retrieval":
        return evaluate_retrieval(enc.model, _loader(enc, pairs, "pair", tok, batch_size, max_len), device)
    if task == "itm":
        return evaluate_itm(enc.model, _loader(enc, pairs, "pair", tok, batch_size, max_len, split=False), device)
    if task == "linear_probe":
        tr = probe_features(enc.model, _loader(enc, train, "image", tok, batch_size, max_len), device)
        va = probe_features(enc.model, _loader(enc, val, "image", tok, batch_size, max_len), device)
        return linear_probe(tr, va)
    from momo_ds.eval.text_cls import GLUE_TASKS, finetune_text, glue_task_name

    return finetune_text(enc.model, tok, GLUE_TASKS[glue_task_name(glue_task)], train[0], val[0], max_len=max_len,
                         device=device, **glue_kwargs)


def evaluate_synthetic(encoder_path: str | Path, info, device: torch.device = torch.device("cpu"),
                       probe_train: int = 2) -> dict[str, Any]:
    """Retrieval on the synthetic pair validation split, a linear probe (image train -> image val) and ITM on the
    retrieval split. ITM runs last, with a generator of its own, so the other numbers do not depend on it; an
    export written before the ITM head was exported has no "itm" entry."""
    enc = load_encoder(encoder_path, device)
    pairs = [info.shards["pair"]["val"]]
    report = {"encoder": str(encoder_path),
              "retrieval": run_task(enc, "retrieval", pairs=pairs, device=device),
              "linear_probe": run_task(enc, "linear_probe", train=[info.shards["image"]["train"]],
                                       val=[info.shards["image"]["val"]], device=device)}
    if enc.has_itm_head:
        report["itm"] = run_task(enc, "itm", pairs=pairs, device=device)
    return report


def write_report(results: dict[str, Any], path: Optional[str | Path], title: str = "momo-ds evaluation") -> None:
    """Print a rich table of every numeric result and write the JSON (atomically) when ``path`` is given."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "metric", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for task, metrics in results.items():
        if isinstance(metrics, dict):
            for k, v in metrics.items():
                table.add_row(task, k, f"{v:.2f}" if isinstance(v, float) else str(v))
    Console().print(table)
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)
