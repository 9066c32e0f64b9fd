"""Text files -> text shards (``{txt}`` samples): .jsonl, .json, .parquet records or plain UTF-8 text."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional, Sequence

from momo_ds.data.shard_writer import PathLike, Progress, ShardSink, ShardSummary, clean_text

# Suffixes that `texts` refuses instead of reading their bytes as text, with what to do instead.
_NOT_TEXT = {".csv": "convert it to .jsonl", ".tsv": "convert it to .jsonl", ".arrow": "convert it to .parquet",
             ".feather": "convert it to .parquet", ".gz": "decompress it first", ".bz2": "decompress it first",
             ".xz": "decompress it first", ".zst": "decompress it first", ".zip": "extract it first",
             ".tar": "extract it first", ".pdf": "extract its text first"}

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
    sink = ShardSink(out_dir, prefix, shard_size)
    for p in files:
        for doc in _text_units(p, unit, text_field, sink.skips):
            doc = clean_text(doc)
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
