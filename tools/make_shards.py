#!/usr/bin/env python
"""Build webdataset shards for momo-ds from local data.

    python tools/make_shards.py images   --root imagenet/train --out shards/imagenet --prefix train
    python tools/make_shards.py texts    wiki/*.txt books.jsonl --out shards/text [--unit paragraph|line|file]
    python tools/make_shards.py captions coco/annotations/captions_train2017.json --out shards/coco

Prints the brace pattern to put in a stream's ``shards:`` and a summary of samples written and skipped (and why,
when nothing was written). Exit status: 0 when samples were written, 1 when none were, 2 on an unusable input
(one ``error: ...`` line on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from momo_ds.data import caption_shards, shard_writer as sw, text_shards  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--prefix", default="train", help="shard name prefix (train, val...)")
    common.add_argument("--shard-size", type=int, default=None, help="samples per shard")
    img = sub.add_parser("images", parents=[common],
                         help="image folder: one sub-folder per class, or flat (unlabelled images)")
    img.add_argument("--root", required=True)
    img.add_argument("--class-index", default=None, help="class_index.json to reuse (e.g. the train split's)")
    txt = sub.add_parser("texts", parents=[common], help="plain text, .jsonl, .json array or .parquet documents")
    txt.add_argument("paths", nargs="+")
    txt.add_argument("--unit", default="paragraph", choices=["paragraph", "line", "file"],
                     help="documents of plain-text files")
    txt.add_argument("--text-field", default="text", help="field of .jsonl/.json records, column of .parquet")
    cap = sub.add_parser("captions", parents=[common],
                         help="JSONL / CSV / TSV / JSON array of records / COCO captions JSON / Karpathy split JSON")
    cap.add_argument("path")
    cap.add_argument("--image-root", default=None,
                     help="folder of relative image paths (default: the file's folder; for COCO's "
                          "annotations/captions_<split>.json, the <split>/ folder beside annotations/)")
    cap.add_argument("--image-field", default=None)
    cap.add_argument("--caption-field", default=None)
    cap.add_argument("--split", action="append", default=None,
                     help="Karpathy split files (dataset_coco.json, dataset_flickr30k.json): the split(s) to write, "
                          "e.g. --split train --split restval (default: all)")
    for s in (img, cap):
        s.add_argument("--seed", type=int, default=0, help="shuffle seed for the sample order")
        s.add_argument("--no-shuffle", action="store_true")
        s.add_argument("--no-verify", action="store_true", help="do not open images to check them")
    return p.parse_args(argv)


def _load_class_index(path: str) -> dict[str, int]:
    """A class_index.json, with a one-line error when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"class index not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def run(args: argparse.Namespace, console: Console) -> sw.ShardSummary:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        if args.command == "images":
            task = bar.add_task(f"images {args.root}", total=None)
            index = _load_class_index(args.class_index) if args.class_index else None
            return sw.write_image_folder(args.root, args.out, prefix=args.prefix, shard_size=args.shard_size or 1000,
                                         shuffle_seed=None if args.no_shuffle else args.seed,
                                         verify=not args.no_verify, class_index=index,
                                         progress=lambda n: bar.advance(task, n),
                                         total=lambda n: bar.update(task, total=n))
        if args.command == "texts":
            task = bar.add_task("text files", total=len(args.paths))
            return text_shards.write_texts(args.paths, args.out, prefix=args.prefix, shard_size=args.shard_size or 10000,
                                  unit=args.unit, text_field=args.text_field, progress=lambda n: bar.advance(task, n))
        task = bar.add_task(f"captions {args.path}", total=None)
        return caption_shards.write_captions(args.path, args.out, image_root=args.image_root, prefix=args.prefix,
                                 shard_size=args.shard_size or 1000, image_field=args.image_field,
                                 caption_field=args.caption_field, verify=not args.no_verify, splits=args.split,
                                 shuffle_seed=None if args.no_shuffle else args.seed,
                                 progress=lambda n: bar.advance(task, n),
                                 total=lambda n: bar.update(task, total=n))


def print_summary(summary: sw.ShardSummary, console: Console) -> None:
    table = Table(title="make_shards summary")
    table.add_column("item")
    table.add_column("count", justify="right")
    table.add_row("samples written", str(summary.written))
    table.add_row("shards", str(len(summary.shards)))
    for reason, n in summary.skipped.items():
        table.add_row(f"skipped: {reason}", str(n))
    console.print(table)
    lines = [f"{k}: {v}" for k, v in summary.extra.items()]
    if not summary.written:
        lines.append(f"no samples written: {summary.why_empty()}")
    lines.append(f"shards: {summary.pattern or '(none written)'}")
    for line in lines:  # paths verbatim: no markup, highlighting or wrapping
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=False)
    try:
        summary = run(args, console)
    except (OSError, ValueError) as e:  # unusable input: one line, no traceback
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    print_summary(summary, console)
    return 0 if summary.written else 1


if __name__ == "__main__":
    sys.exit(main())
