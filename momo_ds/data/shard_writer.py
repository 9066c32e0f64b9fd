"""Write webdataset shards from an image folder, text files and caption files (used by tools/make_shards.py).

Output: ``<out_dir>/<prefix>-NNNNNN.tar`` written with webdataset.ShardWriter, samples of the loader's formats:
image ``{jpg|png|webp, cls}``, text ``{txt}``, pair ``{jpg|png|webp, txt}``. Image bytes are stored as they are
(no re-encoding), under the extension of their detected format. Inputs that cannot be used are skipped and
counted per reason in the returned :class:`ShardSummary`.
"""
from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import webdataset as wds
from PIL import Image

PathLike = Union[str, Path]
Progress = Optional[Callable[[int], None]]
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
IMAGE_FIELDS = ("image", "image_path", "file_name", "filename", "filepath", "path")
CAPTION_FIELDS = ("caption", "text", "txt", "sentence")


@dataclass
class ShardSummary:
    """What a writer produced: the shards (and their brace pattern), samples written, skips per reason."""

    shards: list[str] = field(default_factory=list)
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pattern(self) -> str:
        if not self.shards:
            return ""
        first = Path(self.shards[0])
        stem = first.name.rsplit("-", 1)[0]
        return str(first.parent / f"{stem}-{{000000..{len(self.shards) - 1:06d}}}.tar")


class _Sink:
    """ShardWriter that records shard names and counts skips."""

    def __init__(self, out_dir: PathLike, prefix: str, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size} must be >= 1")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.summary = ShardSummary()
        self.skips: Counter = Counter()
        self._writer = wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0,
                                       encoder=False, post=self.summary.shards.append)
        self.prefix = prefix

    def write(self, members: dict[str, bytes]) -> None:
        key = f"{self.prefix}_{self.summary.written:09d}"
        self._writer.write({"__key__": key, **members})
        self.summary.written += 1

    def skip(self, reason: str) -> None:
        self.skips[reason] += 1

    def close(self) -> ShardSummary:
        self._writer.close()
        if self.summary.written == 0:  # ShardWriter opens a first (empty) shard eagerly
            for s in self.summary.shards:
                Path(s).unlink(missing_ok=True)
            self.summary.shards = []
        self.summary.skipped = dict(sorted(self.skips.items()))
        return self.summary


def read_image(path: Path, verify: bool = True) -> tuple[bytes, str]:
    """(bytes, extension) of an image file; raises ValueError(reason) when it cannot be used."""
    if not path.is_file():
        raise ValueError("missing_image")
    data = path.read_bytes()
    if not data:
        raise ValueError("empty_file")
    ext = IMAGE_SUFFIXES.get(path.suffix.lower())
    if verify:
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                img.verify()
        except Exception:
            raise ValueError("unreadable_image") from None
        ext = _FORMAT_EXT.get(fmt or "")
    if ext is None:
        raise ValueError("unsupported_format")
    return data, ext


def write_image_folder(root: PathLike, out_dir: PathLike, *, prefix: str = "train", shard_size: int = 1000,
                       shuffle_seed: Optional[int] = 0, verify: bool = True, progress: Progress = None,
                       class_index: Optional[dict[str, int]] = None) -> ShardSummary:
    """``root/<class>/<image>`` → image shards with ``cls``; writes ``<out_dir>/class_index.json``.

    Classes are the sorted sub-folder names (or ``class_index``, e.g. the train split's, for a val split).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if class_index is None:
        class_index = {c: i for i, c in enumerate(classes)}
    files = [(p, c) for c in classes for p in sorted((root / c).rglob("*")) if p.is_file()]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(files)
    sink = _Sink(out_dir, prefix, shard_size)
    for path, cls in files:
        try:
            if cls not in class_index:
                raise ValueError("unknown_class")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError("unsupported_extension")
            data, ext = read_image(path, verify)
            sink.write({ext: data, "cls": str(class_index[cls]).encode()})
        except ValueError as e:
            sink.skip(str(e))
        if progress:
            progress(1)
    summary = sink.close()
    index_path = Path(out_dir) / "class_index.json"
    index_path.write_text(json.dumps(class_index, indent=1))
    summary.extra["class_index"] = str(index_path)
    return summary


def _clean(text: str) -> str:
    return " ".join(text.split())


def _text_units(path: Path, unit: str, text_field: str, skips: Counter) -> Iterator[str]:
    """Documents of one .txt (per file / paragraph / line) or .jsonl (one ``text_field`` per line) file."""
    if path.suffix.lower() == ".jsonl":
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line.decode("utf-8")).get(text_field)
                except UnicodeDecodeError:
                    skips["bad_utf8"] += 1
                    continue
                except (json.JSONDecodeError, AttributeError):
                    skips["bad_record"] += 1
                    continue
                if not isinstance(value, str):
                    skips["missing_field"] += 1
                    continue
                yield value
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        skips["bad_utf8"] += 1
        return
    if unit == "file":
        yield text
    elif unit == "line":
        yield from text.splitlines()
    else:
        paragraph: list[str] = []
        for line in text.splitlines() + [""]:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []


def write_texts(paths: Sequence[PathLike], out_dir: PathLike, *, prefix: str = "train", shard_size: int = 10000,
                unit: str = "paragraph", text_field: str = "text", progress: Progress = None) -> ShardSummary:
    """``.txt`` (documents per ``unit``: file | paragraph | line) and ``.jsonl`` files → text shards."""
    if unit not in ("file", "paragraph", "line"):
        raise ValueError(f"unit={unit!r}; valid: file, paragraph, line")
    sink = _Sink(out_dir, prefix, shard_size)
    for p in map(Path, paths):
        if not p.is_file():
            sink.skip("missing_file")
            continue
        for doc in _text_units(p, unit, text_field, sink.skips):
            doc = _clean(doc)
            if doc:
                sink.write({"txt": doc.encode("utf-8")})
            else:
                sink.skip("empty_text")
        if progress:
            progress(1)
    return sink.close()


def _first(record: dict, names: Sequence[str]):
    for n in names:
        if record.get(n) not in (None, ""):
            return record[n]
    return None


def read_caption_records(path: PathLike, *, image_field: Optional[str] = None,
                         caption_field: Optional[str] = None) -> tuple[list[tuple[str, str]], Counter]:
    """(image path, caption) records of a JSONL, CSV/TSV or COCO-captions JSON file, and skip counts."""
    path = Path(path)
    skips: Counter = Counter()
    images = (image_field,) if image_field else IMAGE_FIELDS
    captions = (caption_field,) if caption_field else CAPTION_FIELDS
    rows: Iterable[dict]
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and "annotations" in data and "images" in data):
            raise ValueError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
        files = {im["id"]: im["file_name"] for im in data["images"]}
        rows = [{"image": files.get(a.get("image_id")), "caption": a.get("caption")} for a in data["annotations"]]
        images, captions = ("image",), ("caption",)
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".jsonl":
        rows = []
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                skips["bad_record"] += 1
    else:
        raise ValueError(f"{path}: caption file must be .jsonl, .csv, .tsv or COCO .json")
    records = []
    for r in rows:
        img, cap = (_first(r, images), _first(r, captions)) if isinstance(r, dict) else (None, None)
        if img is None:
            skips["missing_field"] += 1
        elif not isinstance(cap, str) or not _clean(cap):
            skips["empty_caption"] += 1
        else:
            records.append((str(img), _clean(cap)))
    return records, skips


def write_captions(path: PathLike, out_dir: PathLike, *, image_root: Optional[PathLike] = None,
                   prefix: str = "train", shard_size: int = 1000, image_field: Optional[str] = None,
                   caption_field: Optional[str] = None, shuffle_seed: Optional[int] = 0, verify: bool = True,
                   progress: Progress = None) -> ShardSummary:
    """A caption file (one sample per caption; COCO's 5 captions → 5 samples) → pair shards.

    Relative image paths resolve against ``image_root`` (default: the caption file's folder).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records, skips = read_caption_records(path, image_field=image_field, caption_field=caption_field)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(records)
    sink = _Sink(out_dir, prefix, shard_size)
    sink.skips.update(skips)
    cache: dict[Path, tuple[bytes, str]] = {}
    for image, cap in records:
        p = Path(image) if Path(image).is_absolute() else root / image
        try:
            if p not in cache:
                cache = {p: read_image(p, verify)}  # consecutive captions of one image reuse it
            data, ext = cache[p]
            sink.write({ext: data, "txt": cap.encode("utf-8")})
        except ValueError as e:
            sink.skip(str(e))
        if progress:
            progress(1)
    return sink.close()
