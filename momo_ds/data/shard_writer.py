"""Write webdataset shards (used by tools/make_shards.py): the shared sink and summary, and the image-folder writer;
text files: :mod:`momo_ds.data.text_shards`, caption files: :mod:`momo_ds.data.caption_shards`.

Output: ``<out_dir>/<prefix>-NNNNNN.tar`` written with webdataset.ShardWriter, samples of the loader's formats:

- image ``{jpg|png|webp[, cls]}``: ``cls`` is the class index of a ``root/<class>/<image>`` folder; a flat folder
  of unlabelled images gives samples without ``cls`` (image streams do not need one).
- text ``{txt}``: one UTF-8 document.
- pair ``{jpg|png|webp, txt}``: one image and *all* its captions, one per line of ``txt`` (UTF-8, ``\\n``-separated;
  captions are whitespace-cleaned, so a caption never contains a newline). Caption records naming the same image
  become one sample, so an image is stored once however many captions it has (COCO's five). The loader trains on
  one caption per sample (drawn per sample) and evaluates on every caption.

Image bytes are stored as they are (no re-encoding), under the extension of their detected format. Inputs that
cannot be used are skipped and counted per reason in the returned :class:`ShardSummary`; an input that cannot be
read at all (missing folder or file, unsupported file type, a table without known columns) raises
FileNotFoundError or ValueError with a one-line message.
"""
from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import webdataset as wds
from PIL import Image

PathLike = Union[str, Path]
Progress = Optional[Callable[[int], None]]  # called with the number of inputs just processed
Total = Optional[Callable[[int], None]]  # called once, before writing, with the number of inputs Progress counts
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_SKIP_HINTS = {
    "missing_image": "check the image root shown above (--image-root)",
    "remote_url": "the images are URLs; download them first (make_shards reads local files only)",
    "missing_field": "name the fields with --image-field / --caption-field / --text-field",
    "unknown_class": "the class folders are not in the --class-index given",
    "outside_class_folder": "files directly in a folder that has sub-folders are not read; move them into a class "
                            "folder, or keep a flat folder without sub-folders",
}


@dataclass
class ShardSummary:
    """What a writer produced: the shards (and their brace pattern), samples written, skips per reason."""

    shards: list[str] = field(default_factory=list)
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    note: str = ""  # why nothing was written, set by a writer that found no input at all

    @property
    def pattern(self) -> str:
        if not self.shards:
            return ""
        first = Path(self.shards[0])
        stem = first.name.rsplit("-", 1)[0]
        return str(first.parent / f"{stem}-{{000000..{len(self.shards) - 1:06d}}}.tar")

    def why_empty(self) -> str:
        """One line saying why no sample was written ('' when some were): a run that writes nothing says why."""
        if self.written:
            return ""
        if self.note:
            return self.note
        if not self.skipped:
            return "the inputs hold no samples"
        counts = ", ".join(f"{reason} {n}" for reason, n in self.skipped.items())
        top = max(self.skipped, key=self.skipped.__getitem__)
        hint = f"; {_SKIP_HINTS[top]}" if top in _SKIP_HINTS else ""
        return f"every input was skipped ({counts}){hint}"


class ShardSink:
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
                       class_index: Optional[dict[str, int]] = None, total: Total = None) -> ShardSummary:
    """``root/<class>/<image>`` → image shards with ``cls``, and ``<out_dir>/class_index.json``.

    Classes are the sorted sub-folder names (or ``class_index``, e.g. the train split's, for a val split). A root
    without sub-folders is a flat folder of unlabelled images: its images are written without ``cls``. Files
    directly in a root that has class folders are skipped (``outside_class_folder``), not silently dropped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    loose = sorted(p for p in root.iterdir() if p.is_file())
    if not classes and class_index is not None and loose:
        raise ValueError(f"a class index was given but {root} has no class sub-folders (a flat folder is unlabelled)")
    if class_index is None:
        class_index = {c: i for i, c in enumerate(classes)}
    files: list[tuple[Path, Optional[str]]]
    if classes:
        files = [(p, c) for c in classes for p in sorted((root / c).rglob("*")) if p.is_file()]
    else:
        files = [(p, None) for p in loose]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(files)
    if total:
        total(len(files))
    sink = ShardSink(out_dir, prefix, shard_size)
    if classes and loose:
        sink.skips["outside_class_folder"] += len(loose)
    for path, cls in files:
        try:
            if cls is not None and cls not in class_index:
                raise ValueError("unknown_class")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError("unsupported_extension")
            data, ext = read_image(path, verify)
            sink.write({ext: data} if cls is None else {ext: data, "cls": str(class_index[cls]).encode()})
        except ValueError as e:
            sink.skip(str(e))
        if progress:
            progress(1)
    summary = sink.close()
    if not files:
        summary.note = f"no images found under {root}"
    if classes:
        index_path = Path(out_dir) / "class_index.json"
        index_path.write_text(json.dumps(class_index, indent=1))
        summary.extra["class_index"] = str(index_path)
    elif files:
        summary.extra["labels"] = "none: flat folder, images written without cls"
    return summary


def clean_text(text: str) -> str:
    """Whitespace runs (newlines included) -> one space, stripped."""
    return " ".join(text.split())
