"""``tools/evaluate.py --suite paper``: the evaluations of the paper's Table 2 on whatever data a folder holds.

Layout of ``--data`` (every part optional; what is absent is reported as not run)::

    vqa/            VQAv2: v2_OpenEnded_mscoco_{train2014,val2014}_questions.json, v2_mscoco_*_annotations.json,
                    train2014/ val2014/ images (momo_ds.eval.vqa_data)
    coco/           dataset_coco.json (Karpathy) + val2014/ (and train2014/) images: the 5k test split
    flickr30k/      dataset_flickr30k.json + flickr30k-images/ (or the images in the folder itself): the 1k test
    glue/           the GLUE download: SST-2/ RTE/ MRPC/ QQP/ MNLI/ QNLI/ STS-B/ CoLA/ (momo_ds.eval.glue_suite)
    imagenet/       labelled image shards train-*.tar and val-*.tar (tools/make_shards.py images)

Each task runs from the loaded encoder (fine-tuning tasks on a copy), one after another; a task that fails is
recorded as {"error": ...} and the others still run.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from momo_ds.eval.encoder import LoadedEncoder


@dataclass
class SuiteData:
    """The parts of a suite folder that are present."""
    vqa: Optional[Path] = None
    retrieval: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (Karpathy json, image root)
    glue: Optional[Path] = None
    imagenet: Optional[tuple[str, str]] = None  # (train, val) shard patterns

    @property
    def empty(self) -> bool:
        return not (self.vqa or self.retrieval or self.glue or self.imagenet)


def _shards(folder: Path, split: str) -> Optional[str]:
    files = sorted(folder.glob(f"{split}-*.tar"))
    return " ".join(map(str, files)) if files else None


def find_suite_data(root: str | Path) -> SuiteData:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"suite data folder not found: {root}")
    data = SuiteData()
    if (root / "vqa").is_dir() and any((root / "vqa").glob("*_questions.json")):
        data.vqa = root / "vqa"
    for name, file, images in (("coco", "dataset_coco.json", "."), ("flickr30k", "dataset_flickr30k.json",
                                                                        "flickr30k-images")):
        if (root / name / file).is_file():
            image_root = root / name / images
            data.retrieval[name] = (root / name / file, image_root if image_root.is_dir() else root / name)
    if (root / "glue").is_dir():
        data.glue = root / "glue"
    train, val = _shards(root / "imagenet", "train"), _shards(root / "imagenet", "val")
    if train and val:
        data.imagenet = (train, val)
    if data.empty:
        raise ValueError(f"{root}: no suite data (expected any of vqa/, coco/dataset_coco.json, "
                         "flickr30k/dataset_flickr30k.json, glue/, imagenet/{train,val}-*.tar)")
    return data


def _tasks(enc: LoadedEncoder, data: SuiteData, opts: dict[str, Any], say) -> dict[str, Callable[[], Any]]:
    """name -> a call that runs it (lazily imported, so a missing optional part costs nothing)."""
    from momo_ds.eval.runner import run_task

    common = {k: opts[k] for k in ("device", "batch_size", "max_len", "tokenizer") if k in opts}
    tasks: dict[str, Callable[[], Any]] = {}
    if data.vqa is not None:
        tasks["vqa"] = lambda: run_task(enc, "vqa", vqa=str(data.vqa), **common, **opts.get("vqa", {}))
    for name, (file, images) in data.retrieval.items():
        tasks[name] = (lambda f=file, i=images: run_task(enc, "retrieval", karpathy=str(f), images=str(i),
                                                          **common))
    if data.glue is not None:
        tasks["glue"] = lambda: run_task(enc, "glue", glue_dir=str(data.glue), **common, **opts.get("glue", {}))
    if data.imagenet is not None:
        tr, va = data.imagenet
        tasks["imagenet"] = lambda: run_task(enc, "linear_probe", train=tr.split(), val=va.split(), **common)
    return tasks


def run_paper_suite(enc: LoadedEncoder, root: str | Path, say: Callable[[str], None] = print,
                    **opts) -> tuple[dict[str, Any], int]:
    """Every evaluation the folder has data for -> ({task: metrics or {"error"}}, exit status: 0, 2 = a task
    had bad input, 1 = a task failed otherwise). opts: device, batch_size, max_len, tokenizer, and per-task
    keyword dicts ``vqa`` / ``glue``."""
    data = find_suite_data(root)
    results: dict[str, Any] = {}
    code = 0
    for name, call in _tasks(enc, data, opts, say).items():
        say(f"suite: {name}")
        try:
            results[name] = call()
        except Exception as e:  # recorded; the other tasks still run
            bad = isinstance(e, ValueError)
            if not bad:
                traceback.print_exc()
            results[name] = {"error": " ".join(str(e).split()) or type(e).__name__}
            say(f"error: {name}: {results[name]['error']}")
            code = code or (2 if bad else 1)
    results["not_run"] = [n for n in ("vqa", "coco", "flickr30k", "glue", "imagenet") if n not in results]
    return results, code

