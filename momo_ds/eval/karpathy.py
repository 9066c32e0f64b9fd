"""Retrieval data as people publish it: the Karpathy splits of COCO and Flickr30k.

``dataset_coco.json`` / ``dataset_flickr30k.json`` hold ``{"dataset": ..., "images": [{"filename", "filepath"
(COCO only: train2014 | val2014), "split" (train | restval | val | test), "sentences": [{"raw", ...}], ...}]}``.
The standard test sets are COCO 5k (split ``test``, 5,000 images, ~25,000 captions) and Flickr30k 1k (1,000
images, 5,000 captions). Images are read from ``<image_root>/<filepath>/<filename>`` (COCO's
``val2014/COCO_val2014_*.jpg``) or ``<image_root>/<filename>`` (Flickr30k's ``flickr30k-images``).

Each image becomes the raw sample a caption shard holds for it (image bytes + all its captions, one per line,
cleaned as ``tools/make_shards.py captions`` cleans them) and goes through the evaluation loader's own sample
processing and collation, so a Karpathy JSON and the same data written as shards give the same batches and the
same recall. An image counts as retrieved when any of its captions is (``momo_ds.eval.retrieval``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from momo_ds.batch import PairBatch
from momo_ds.data.shard_writer import clean_text

SPLITS = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class KarpathyImage:
    key: str  # the image's file name without suffix (sample key)
    path: Path
    captions: tuple[str, ...]


def _load(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"Karpathy split file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path}: no 'images' list (expected the layout of dataset_coco.json / "
                         "dataset_flickr30k.json)")
    return images


def _image_path(root: Path, entry: dict, where: str) -> Path:
    name = entry.get("filename")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: no 'filename'")
    flat = root / name
    if "filepath" not in entry:
        return flat
    nested = root / str(entry["filepath"]) / name  # COCO: <root>/val2014/COCO_val2014_*.jpg
    return flat if flat.is_file() and not nested.is_file() else nested


def read_karpathy(path: str | Path, image_root: str | Path, split: str | Sequence[str] = "test",
                  check_files: bool = True) -> list[KarpathyImage]:
    """The images of ``split`` (a name or several, e.g. ``("train", "restval")``) in file order, each with its
    cleaned non-empty captions; one-line ValueError for a malformed file, an unknown split, a missing image."""
    path, root = Path(path), Path(image_root)
    wanted = {split} if isinstance(split, str) else set(split)
    if not wanted <= set(SPLITS):
        raise ValueError(f"unknown Karpathy split(s) {sorted(wanted - set(SPLITS))}; valid: {', '.join(SPLITS)}")
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root}")
    out = []
    for i, entry in enumerate(_load(path)):
        if not isinstance(entry, dict) or entry.get("split") not in wanted:
            continue
        where = f"{path}: images[{i}]"
        captions = tuple(c for c in (clean_text(str(s.get("raw", ""))) for s in entry.get("sentences", ())
                                     if isinstance(s, dict)) if c)
        if not captions:
            raise ValueError(f"{where}: no captions ('sentences' with 'raw' text)")
        image = _image_path(root, entry, where)
        if check_files and not image.is_file():
            raise ValueError(f"{where}: image not found: {image}")
        out.append(KarpathyImage(key=Path(image.name).stem, path=image, captions=captions))
    if not out:
        raise ValueError(f"{path}: no images in split {'/'.join(sorted(wanted))}")
    return out


def raw_sample(image: KarpathyImage) -> dict:
    """The pair-shard sample of one image: its bytes under its own suffix, and every caption, one per line."""
    suffix = image.path.suffix.lower().lstrip(".")
    return {"__key__": image.key, "jpg" if suffix == "jpeg" else suffix: image.path.read_bytes(),
            "txt": "\n".join(image.captions).encode()}


@dataclass
class KarpathyPairs:
    """Evaluation pair batches of this rank's share of ``images`` (contiguous blocks, as shards split by rank
    are), through the evaluation loader's sample processing; re-iterable like an evaluation loader (ITM reads the
    pairs twice). An unreadable image is a one-line error."""

    images: Sequence[KarpathyImage]
    tokenizer: object
    image_size: int
    patch_size: int
    batch_size: int
    max_text_len: int
    rank: int = 0
    world_size: int = 1

    def __iter__(self) -> Iterator[PairBatch]:
        from momo_ds.config import StreamConfig
        from momo_ds.data.errors import SampleError
        from momo_ds.data.stream import SampleProcessor, StreamSpec, collate_stream

        stream = StreamConfig(name="karpathy", kind="pair", objectives={}, batch_size=self.batch_size,
                              augment="none", max_text_len=self.max_text_len)
        spec = StreamSpec(stream=stream, urls=[], image_size=self.image_size, patch_size=self.patch_size,
                          rank=self.rank, world_size=self.world_size, train=False, shuffle_buffer=0)
        process, pad_id = SampleProcessor(spec, self.tokenizer), getattr(self.tokenizer, "pad_id", 0)
        n = len(self.images)
        buf: list = []
        for image in self.images[n * self.rank // self.world_size: n * (self.rank + 1) // self.world_size]:
            try:
                buf += process(raw_sample(image), 0)
            except SampleError as e:
                raise ValueError(f"{image.path}: {e}") from None
            while len(buf) >= self.batch_size:
                yield collate_stream(spec, buf[:self.batch_size], pad_id, 0)
                buf = buf[self.batch_size:]
        if buf:
            yield collate_stream(spec, buf, pad_id, 0)
