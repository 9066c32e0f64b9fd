"""Evaluation tasks on an exported encoder: retrieval, image-text matching, linear probe, text classification;
table + JSON report."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from momo_ds import distributed as mdist
from momo_ds.eval.encoder import LoadedEncoder, load_encoder

TASKS = ("retrieval", "itm", "linear_probe", "glue", "vqa")
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


def _karpathy(enc: LoadedEncoder, path: str, images: Optional[str], split: str, tokenizer, batch_size: int,
              max_len: int, split_ranks: bool = True):
    """Pair batches of a Karpathy split file (this rank's share when ``split_ranks``)."""
    from momo_ds.eval.karpathy import KarpathyPairs, read_karpathy

    entries = read_karpathy(path, images or Path(path).resolve().parent, split)
    rank, world = (mdist.get_rank(), mdist.get_world_size()) if split_ranks else (0, 1)
    return KarpathyPairs(entries, tokenizer, enc.config.img_size, enc.config.patch_size, batch_size, max_len,
                         rank, world)


def check_task(task: str, *, pairs: Sequence[str] = (), train: Sequence[str] = (), val: Sequence[str] = (),
               glue_task: str = "", has_itm_head: bool = True, karpathy: str = "", glue_dir: str = "",
               vqa: str = "") -> None:
    """The inputs a task needs, checked before any task runs: a typo in the last task of a command should not
    surface only after the first ones have spent their hours. has_itm_head: the encoder's (LoadedEncoder)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task in ("retrieval", "itm"):
        if not pairs and not karpathy:
            raise ValueError(f"{task} needs --pairs (image-text pair shards) or --karpathy (dataset_coco.json ...)")
        if pairs and karpathy:
            raise ValueError(f"{task}: give --pairs or --karpathy, not both")
    if task == "itm" and not has_itm_head:
        raise ValueError("itm: this export has no ITM head (written before encoder exports included it)")
    if task == "linear_probe" and (not train or not val):
        raise ValueError("linear_probe needs --train and --val (labelled image shards)")
    if task == "vqa" and not vqa:
        raise ValueError("vqa needs --vqa (a folder in the VQAv2 layout: questions + annotations JSON, images)")
    if task == "glue":
        _check_glue(glue_task, glue_dir, train, val)


def _check_glue(glue_task: str, glue_dir: str, train: Sequence[str], val: Sequence[str]) -> None:
    from momo_ds.eval.text_cls import GLUE_TASKS, glue_task_name

    if glue_dir:
        if not Path(glue_dir).is_dir():
            raise ValueError(f"--glue_dir {glue_dir}: not a folder")
        return
    if not glue_task:
        raise ValueError(f"glue needs --glue_dir (the suite) or --glue_task, one of: {', '.join(GLUE_TASKS)}")
    if glue_task_name(glue_task) not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {glue_task!r}; valid: {', '.join(GLUE_TASKS)}")
    if len(train) != 1 or len(val) != 1:
        raise ValueError("glue needs one --train and one --val file (TSV or JSONL)")


def run_task(enc: LoadedEncoder, task: str, *, pairs: Sequence[str] = (), train: Sequence[str] = (),
             val: Sequence[str] = (), glue_task: str = "", tokenizer: Optional[str] = None, batch_size: int = 256,
             max_len: Optional[int] = None, device: torch.device = torch.device("cpu"), karpathy: str = "",
             images: Optional[str] = None, split: str = "test", glue_dir: str = "", vqa: str = "",
             **finetune) -> dict[str, Any]:
    """One evaluation task; raises ValueError (one line) on an unknown task or missing inputs.

    max_len: tokens per text (retrieval / ITM captions, GLUE inputs); None = :func:`text_max_len`'s default.
    karpathy, images, split: retrieval / ITM pairs from a Karpathy split file (``dataset_coco.json``), its image
    folder (default: the file's folder) and split, instead of ``pairs`` shards.
    glue: ``glue_dir`` runs the suite (:mod:`momo_ds.eval.glue_suite`), else ``glue_task`` on ``train``/``val``.
    vqa: a VQAv2-layout folder (:mod:`momo_ds.eval.vqa`). finetune: the fine-tuning tasks' keyword arguments.
    Fine-tuning tasks train a copy: ``enc.model`` is left as it was for the tasks after them.
    ITM runs as one process on the whole split (see :func:`momo_ds.eval.itm.evaluate_itm`)."""
    from momo_ds.eval.itm import evaluate_itm
    from momo_ds.eval.linear_probe import probe_features, linear_probe
    from momo_ds.eval.retrieval import evaluate_retrieval

    check_task(task, pairs=pairs, train=train, val=val, glue_task=glue_task, has_itm_head=enc.has_itm_head,
               karpathy=karpathy, glue_dir=glue_dir, vqa=vqa)
    max_len = text_max_len(enc, max_len)
    tok = _tokenizer(enc, tokenizer)
    if task in ("retrieval", "itm"):
        one = task == "itm"
        batches = (_karpathy(enc, karpathy, images, split, tok, batch_size, max_len, split_ranks=not one) if karpathy
                   else _loader(enc, pairs, "pair", tok, batch_size, max_len, split=not one))
        return (evaluate_itm if one else evaluate_retrieval)(enc.model, batches, device)
    if task == "linear_probe":
        tr = probe_features(enc.model, _loader(enc, train, "image", tok, batch_size, max_len), device)
        va = probe_features(enc.model, _loader(enc, val, "image", tok, batch_size, max_len), device)
        return linear_probe(tr, va)
    if task == "vqa":
        return _vqa(enc, vqa, images, tok, max_len, device, finetune)
    return _glue(enc, tok, glue_task, glue_dir, train, val, max_len, device, finetune)


def _vqa(enc: LoadedEncoder, root: str, images: Optional[str], tok, max_len: int, device: torch.device,
         finetune: dict) -> dict[str, Any]:
    """VQAv2 fine-tuning on a copy of the encoder: ``train_split`` (default train2014) -> ``val_split`` (val2014),
    with the recipe of :data:`momo_ds.eval.vqa.RECIPES` for the encoder's size (tiny below 64 px, else base)
    and the fine-tuning keywords given (epochs, lr, batch_size, seed) over it."""
    from momo_ds.eval.vqa import RECIPES, finetune_vqa
    from momo_ds.eval.vqa_data import load_vqa_split

    train = load_vqa_split(root, finetune.get("train_split", "train2014"), images)
    val = load_vqa_split(root, finetune.get("val_split", "val2014"), images)
    recipe = dict(RECIPES["tiny" if enc.config.img_size < 64 else "base"])
    recipe.update({k: v for k, v in finetune.items() if k in ("epochs", "lr", "batch_size", "seed")})
    recipe.setdefault("image_size", enc.config.img_size)
    return finetune_vqa(copy.deepcopy(enc.model), tok, train, val, max_len=min(max_len, 40), device=device,
                        **recipe)


def _glue(enc: LoadedEncoder, tok, glue_task: str, glue_dir: str, train: Sequence[str], val: Sequence[str],
          max_len: int, device: torch.device, finetune: dict) -> dict[str, Any]:
    from momo_ds.eval.glue_suite import run_glue_suite
    from momo_ds.eval.text_cls import GLUE_TASKS, finetune_text, glue_task_name

    if glue_dir:
        suite = {k: v for k, v in finetune.items() if k in ("epochs", "lrs", "tasks", "batch_size", "seed")}
        return run_glue_suite(enc.model, tok, glue_dir, max_len=max_len, device=device, **suite)
    finetune = {k: v for k, v in finetune.items() if k in ("epochs", "lr", "batch_size", "seed")}
    return finetune_text(copy.deepcopy(enc.model), tok, GLUE_TASKS[glue_task_name(glue_task)], train[0], val[0],
                         max_len=max_len, device=device, **finetune)


def evaluate_synthetic(encoder_path: str | Path, info, device: torch.device = torch.device("cpu"),
                       probe_train: int = 2, vqa: bool = False) -> dict[str, Any]:
    """Retrieval on the synthetic pair validation split, a linear probe (image train -> image val), ITM on the
    retrieval split, and the orientation probe (:mod:`momo_ds.data.synthetic_probe`, built under
    ``<data>/probe`` on first use). ITM and the orientation probe run after the others (ITM with a generator of
    its own), so the earlier numbers do not depend on them; an export written before the ITM head was exported
    has no "itm" entry. vqa: also fine-tune a copy on the synthetic VQA set (:func:`synthetic_vqa`), last."""
    from momo_ds.data.synthetic_probe import make_orientation_probe

    enc = load_encoder(encoder_path, device)
    pairs = [info.shards["pair"]["val"]]
    report = {"encoder": str(encoder_path),
              "retrieval": run_task(enc, "retrieval", pairs=pairs, device=device),
              "linear_probe": run_task(enc, "linear_probe", train=[info.shards["image"]["train"]],
                                       val=[info.shards["image"]["val"]], device=device)}
    if enc.has_itm_head:
        report["itm"] = run_task(enc, "itm", pairs=pairs, device=device)
    probe = make_orientation_probe(Path(info.root) / "probe", image_size=enc.config.img_size, seed=info.seed)
    report["orientation_probe"] = run_task(enc, "linear_probe", train=[probe.shards["train"]],
                                           val=[probe.shards["val"]], device=device)
    if vqa:
        report["vqa"] = synthetic_vqa(enc, info.root, device)
    return report


def synthetic_vqa(enc: LoadedEncoder, data_root: str | Path, device: torch.device = torch.device("cpu"),
                  seed: int = 0) -> dict[str, float]:
    """VQA fine-tuning of a copy of ``enc`` on the built-in synthetic VQA set (``<data_root>/vqa``) with the
    tiny recipe; the same call on a random-init encoder is its baseline."""
    from momo_ds.eval.vqa import RECIPES, finetune_vqa, synthetic_vqa_splits

    train, val = synthetic_vqa_splits(data_root, image_size=enc.config.img_size)
    return finetune_vqa(copy.deepcopy(enc.model), _tokenizer(enc, None), train, val, device=device, seed=seed,
                        **RECIPES["tiny"])


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
                if isinstance(v, (int, float, str)):  # nested records (a GLUE grid) stay in the JSON only
                    table.add_row(task, k, f"{v:.2f}" if isinstance(v, float) else str(v))
    Console().print(table)
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)
