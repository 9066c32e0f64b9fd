"""Write webdataset shards from an image folder, text files and caption files (used by tools/make_shards.py).

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

import csv
import importlib.util
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import webdataset as wds
from PIL import Image

PathLike = Union[str, Path]
Progress = Optional[Callable[[int], None]]  # called with the number of inputs just processed
Total = Optional[Callable[[int], None]]  # called once, before writing, with the number of inputs Progress counts
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
# Field / column names tried in order (local paths before URLs); img2dataset-style inputs use url / caption / title.
IMAGE_FIELDS = ("image", "image_path", "file_name", "filename", "filepath", "file", "path", "image_url", "url")
CAPTION_FIELDS = ("caption", "text", "txt", "sentence", "title")
URL_PREFIXES = ("http://", "https://")
# Suffixes that `texts` refuses instead of reading their bytes as text, with what to do instead.
_NOT_TEXT = {".csv": "convert it to .jsonl", ".tsv": "convert it to .jsonl", ".arrow": "convert it to .parquet",
             ".feather": "convert it to .parquet", ".gz": "decompress it first", ".bz2": "decompress it first",
             ".xz": "decompress it first", ".zst": "decompress it first", ".zip": "extract it first",
             ".tar": "extract it first", ".pdf": "extract its text first"}
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
    sink = _Sink(out_dir, prefix, shard_size)
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


def _clean(text: str) -> str:
    return " ".join(text.split())


def _check_text_file(path: Path) -> None:
    """Refuse, before anything is written, a text input that is missing or would be mis-read as plain text."""
    if not path.exists():
        raise FileNotFoundError(f"text file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (pass its files, e.g. {path}/*.txt)")
    suffix = path.suffix.lower()
    if suffix in _NOT_TEXT:
        raise ValueError(f"{path}: texts reads plain text, .jsonl, .json and .parquet files, not {suffix}; "
                         f"{_NOT_TEXT[suffix]}")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ValueError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)")


def _record_text(value, text_field: str, skips: Counter) -> Optional[str]:
    """The document of one JSON record: the record itself if a string, else its ``text_field``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        skips["bad_record"] += 1
        return None
    text = value.get(text_field)
    if not isinstance(text, str):
        skips["missing_field"] += 1
        return None
    return text


def _jsonl_texts(path: Path, text_field: str, skips: Counter) -> Iterator[str]:
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                skips["bad_utf8"] += 1
                continue
            except json.JSONDecodeError:
                skips["bad_record"] += 1
                continue
            text = _record_text(value, text_field, skips)
            if text is not None:
                yield text


def _json_texts(path: Path, text_field: str, skips: Counter) -> Iterator[str]:
    """A .json array of documents (strings, or objects with ``text_field``). JSON lines under a .json name (as
    Hugging Face ``datasets`` writes them) are read as .jsonl."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        skips["bad_utf8"] += 1
        return
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values one after the other: one record per line
            yield from _jsonl_texts(path, text_field, skips)
            return
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json text file must hold an array of strings or of objects with "
                         f"{text_field!r}, not a JSON {type(data).__name__}")
    for value in data:
        text = _record_text(value, text_field, skips)
        if text is not None:
            yield text


def _parquet_texts(path: Path, text_field: str, skips: Counter) -> Iterator[str]:
    """The ``text_field`` column of a .parquet file, read batch by batch (pyarrow, checked by _check_text_file)."""
    import pyarrow.parquet as pq
    import pyarrow.types as pat

    f = pq.ParquetFile(path)
    schema = f.schema_arrow
    if text_field not in schema.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                         "choose one with --text-field")
    kind = schema.field(text_field).type
    if not (pat.is_string(kind) or pat.is_large_string(kind)):
        raise ValueError(f"{path}: column {text_field!r} holds {kind}, not text; choose one with --text-field")
    for batch in f.iter_batches(columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if value is None:
                skips["missing_field"] += 1
            else:
                yield value


def _plain_texts(path: Path, unit: str, skips: Counter) -> Iterator[str]:
    """Documents of a UTF-8 text file: the whole file, each line, or each paragraph (blank-line separated)."""
    try:
        text = path.read_bytes().decode("utf-8").lstrip("\ufeff")
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


def _text_units(path: Path, unit: str, text_field: str, skips: Counter) -> Iterator[str]:
    """Documents of one file: .jsonl / .json / .parquet records (``text_field``), or plain text per ``unit``."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_texts(path, text_field, skips)
    if suffix == ".json":
        return _json_texts(path, text_field, skips)
    if suffix == ".parquet":
        return _parquet_texts(path, text_field, skips)
    return _plain_texts(path, unit, skips)


def write_texts(paths: Sequence[PathLike], out_dir: PathLike, *, prefix: str = "train", shard_size: int = 10000,
                unit: str = "paragraph", text_field: str = "text", progress: Progress = None) -> ShardSummary:
    """Text files → text shards: .jsonl (one record per line), .json (an array), .parquet (a column) records give
    one document each; any other file is UTF-8 plain text, split per ``unit`` (file | paragraph | line)."""
    if unit not in ("file", "paragraph", "line"):
        raise ValueError(f"unit={unit!r}; valid: file, paragraph, line")
    files = [Path(p) for p in paths]
    for p in files:
        _check_text_file(p)
    sink = _Sink(out_dir, prefix, shard_size)
    for p in files:
        for doc in _text_units(p, unit, text_field, sink.skips):
            doc = _clean(doc)
            if doc:
                sink.write({"txt": doc.encode("utf-8")})
            else:
                sink.skip("empty_text")
        if progress:
            progress(1)
    summary = sink.close()
    if not files:
        summary.note = "no text files given"
    return summary


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


def read_caption_records(path: PathLike, *, image_field: Optional[str] = None,
                         caption_field: Optional[str] = None) -> tuple[list[tuple[str, str]], Counter]:
    """(image path, caption) records of a JSONL, CSV/TSV, JSON (an array of records, or COCO captions) file,
    and skip counts."""
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
        elif not isinstance(cap, str) or not _clean(cap):
            skips["empty_caption"] += 1
        else:
            records.append((str(img), _clean(cap)))
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
                   progress: Progress = None, total: Total = None) -> ShardSummary:
    """A caption file → pair shards, one sample per image holding all its captions (one per line of ``txt``).

    Relative image paths resolve against ``image_root`` (default: :func:`default_image_root`). The summary's
    extra names the image root used and, when images are missing, the first path looked up.
    """
    path = Path(path)
    records, skips = read_caption_records(path, image_field=image_field, caption_field=caption_field)
    root = Path(image_root) if image_root is not None else default_image_root(path)
    groups = _group_captions(records)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(groups)
    if total:
        total(len(groups))
    sink = _Sink(out_dir, prefix, shard_size)
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
