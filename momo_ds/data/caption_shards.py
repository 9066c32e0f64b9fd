"""Caption files (COCO JSON, JSON lines, CSV/TSV tables, img2dataset-style inputs) -> pair shards, one sample
per image holding all its captions."""
from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from momo_ds.data.shard_writer import (IMAGE_SUFFIXES, PathLike, Progress, ShardSink, ShardSummary, Total, clean_text,
                                       read_image)

# Field / column names tried in order (local paths before URLs); img2dataset-style inputs use url / caption / title.
IMAGE_FIELDS = ("image", "image_path", "file_name", "filename", "filepath", "file", "path", "image_url", "url")
CAPTION_FIELDS = ("caption", "text", "txt", "sentence", "title")
URL_PREFIXES = ("http://", "https://")

def _first(record: dict, names: Sequence[str]):
    for n in names:
        if record.get(n) not in (None, ""):
            return record[n]
    return None


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _is_karpathy(data) -> bool:
    images = data.get("images") if isinstance(data, dict) else None
    return isinstance(images, list) and "annotations" not in data and any(
        isinstance(im, dict) and "sentences" in im for im in images)


def _karpathy_rows(data: dict, splits: Optional[Sequence[str]]) -> list[dict]:
    """{"image", "caption"} rows of a Karpathy split file (dataset_coco.json / dataset_flickr30k.json): the image
    at ``<filepath>/<filename>`` (Flickr30k: ``<filename>``), one row per sentence, the images of ``splits``
    (None: all)."""
    rows = []
    for im in data["images"]:
        if not isinstance(im, dict) or (splits is not None and im.get("split") not in splits):
            continue
        image = "/".join(str(p) for p in (im.get("filepath"), im.get("filename")) if p)
        rows += [{"image": image or None, "caption": s.get("raw")} for s in im.get("sentences", ())
                 if isinstance(s, dict)]
    return rows


def _coco_rows(data, path: Path) -> list[dict]:
    """{"image", "caption"} rows of a COCO captions JSON (``images`` + ``annotations``)."""
    if not (isinstance(data, dict) and isinstance(data.get("annotations"), list)
            and isinstance(data.get("images"), list)):
        raise ValueError(f"{path}: neither a COCO captions file (with 'images' and 'annotations') nor a JSON array "
                         "of records")
    annotations = [a if isinstance(a, dict) else {} for a in data["annotations"]]
    if annotations and not any("caption" in a for a in annotations):
        raise ValueError(f"{path}: its annotations have no 'caption' (COCO captions are in captions_<split>.json)")
    files = {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
    return [{"image": files.get(a.get("image_id")), "caption": a.get("caption")} for a in annotations]


def _column(header: Sequence[str], names: Sequence[str]) -> Optional[int]:
    """Index of the first of ``names`` in a table header (exact name, else case-insensitive: LAION's URL, TEXT)."""
    lower = {h.strip().lower(): i for i, h in reversed(list(enumerate(header)))}
    for n in names:
        if n in header:
            return list(header).index(n)
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _looks_like_image(cell: str) -> bool:
    cell = cell.strip().lower()
    return cell.startswith(URL_PREFIXES) or Path(cell.split("?")[0]).suffix in IMAGE_SUFFIXES


def _headerless_columns(first_row: Sequence[str]) -> Optional[tuple[int, int]]:
    """(image, caption) columns of a headerless two-column table whose first row has one image path/URL cell
    (CC3M's Train_GCC-training.tsv is ``caption<TAB>url``); None when the row does not look like that."""
    if len(first_row) != 2:
        return None
    looks = [_looks_like_image(c) for c in first_row]
    if looks == [False, True]:
        return 1, 0
    if looks == [True, False]:
        return 0, 1
    return None


def _table_rows(path: Path, delimiter: str, image_field: Optional[str], caption_field: Optional[str]) -> list[dict]:
    """{"image", "caption"} rows of a CSV/TSV: columns by header name, or by position in a headerless
    ``caption, image`` two-column file. A table without the columns is an error, not a file of skipped rows."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if not rows:
        return []
    header = rows[0]
    image_col = _column(header, (image_field,) if image_field else IMAGE_FIELDS)
    caption_col = _column(header, (caption_field,) if caption_field else CAPTION_FIELDS)
    body = rows[1:]
    if image_col is None or caption_col is None:
        guess = None if image_field or caption_field else _headerless_columns(header)
        if guess is None:
            missing = "image" if image_col is None else "caption"
            found = ", ".join(repr(h[:40]) for h in header)
            raise ValueError(f"{path}: no {missing} column among the columns found ({found}); add a header row or "
                             "name the columns with --image-field and --caption-field")
        (image_col, caption_col), body = guess, rows

    def cell(row: list[str], i: int) -> Optional[str]:
        return row[i] if i < len(row) else None

    return [{"image": cell(r, image_col), "caption": cell(r, caption_col)} for r in body]


def _jsonl_rows(path: Path, skips: Counter) -> list:
    rows = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skips["bad_record"] += 1
    return rows


def read_caption_records(path: PathLike, *, image_field: Optional[str] = None, caption_field: Optional[str] = None,
                         splits: Optional[Sequence[str]] = None) -> tuple[list[tuple[str, str]], Counter]:
    """(image path, caption) records of a JSONL, CSV/TSV, JSON (an array of records, COCO captions, or a
    Karpathy split file, of which ``splits`` are read: None = all) file, and skip counts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    skips: Counter = Counter()
    images = (image_field,) if image_field else IMAGE_FIELDS
    captions = (caption_field,) if caption_field else CAPTION_FIELDS
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = _load_json(path)
            if isinstance(data, list):  # records, as in .jsonl (e.g. BLIP's coco_karpathy_*.json)
                rows = data
            elif _is_karpathy(data):
                rows, images, captions = _karpathy_rows(data, splits), ("image",), ("caption",)
            else:
                rows, images, captions = _coco_rows(data, path), ("image",), ("caption",)
        elif suffix in (".csv", ".tsv"):
            rows = _table_rows(path, "\t" if suffix == ".tsv" else ",", image_field, caption_field)
            images, captions = ("image",), ("caption",)
        elif suffix == ".jsonl":
            rows = _jsonl_rows(path, skips)
        else:
            raise ValueError(f"{path}: caption file must be .jsonl, .csv, .tsv or .json (records or COCO)")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: unreadable {suffix[1:].upper()} ({e})") from None
    records = []
    for r in rows:
        img, cap = (_first(r, images), _first(r, captions)) if isinstance(r, dict) else (None, None)
        if img is None:
            skips["missing_field"] += 1
        elif not isinstance(cap, str) or not clean_text(cap):
            skips["empty_caption"] += 1
        else:
            records.append((str(img), clean_text(cap)))
    return records, skips


def default_image_root(path: PathLike) -> Path:
    """Where a caption file's relative image paths point when no image root is given.

    COCO keeps ``annotations/captions_<split>.json`` beside the ``<split>/`` image folder, so for such a file the
    first existing of ``<split>/`` beside its folder or inside it; otherwise (and as a fallback) its own folder.
    """
    path = Path(path)
    m = re.fullmatch(r"captions_(\w+)\.json", path.name)
    if m:
        for candidate in (path.absolute().parent.parent / m.group(1), path.parent / m.group(1)):
            if candidate.is_dir():
                return candidate
    return path.parent


def _group_captions(records: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(image, captions) per image path, in order of first appearance: one sample per image, not per caption."""
    groups: dict[str, list[str]] = {}
    for image, caption in records:
        groups.setdefault(image, []).append(caption)
    return list(groups.items())


def write_captions(path: PathLike, out_dir: PathLike, *, image_root: Optional[PathLike] = None,
                   prefix: str = "train", shard_size: int = 1000, image_field: Optional[str] = None,
                   caption_field: Optional[str] = None, shuffle_seed: Optional[int] = 0, verify: bool = True,
                   progress: Progress = None, total: Total = None,
                   splits: Optional[Sequence[str]] = None) -> ShardSummary:
    """A caption file → pair shards, one sample per image holding all its captions (one per line of ``txt``).

    Relative image paths resolve against ``image_root`` (default: :func:`default_image_root`). The summary's
    extra names the image root used and, when images are missing, the first path looked up.
    """
    path = Path(path)
    records, skips = read_caption_records(path, image_field=image_field, caption_field=caption_field, splits=splits)
    root = Path(image_root) if image_root is not None else default_image_root(path)
    groups = _group_captions(records)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(groups)
    if total:
        total(len(groups))
    sink = ShardSink(out_dir, prefix, shard_size)
    sink.skips.update(skips)
    first_missing: Optional[Path] = None
    captions = 0
    for image, caps in groups:
        p = Path(image) if Path(image).is_absolute() else root / image
        try:
            if image.lower().startswith(URL_PREFIXES):
                raise ValueError("remote_url")
            data, ext = read_image(p, verify)
            sink.write({ext: data, "txt": "\n".join(caps).encode("utf-8")})
            captions += len(caps)
        except ValueError as e:
            sink.skip(str(e))
            if str(e) == "missing_image" and first_missing is None:
                first_missing = p
        if progress:
            progress(1)
    summary = sink.close()
    summary.extra["image_root"] = str(root)
    summary.extra["captions"] = str(captions)
    if first_missing is not None:
        summary.extra["first_missing_image"] = str(first_missing)
    if not records and not skips:
        summary.note = f"no caption records in {path}"
    return summary
