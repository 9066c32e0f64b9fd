#!/usr/bin/env python
"""Build webdataset shards for momo-ds from local data.

    python tools/make_shards.py images   --root imagenet/train --out shards/imagenet --prefix train
    python tools/make_shards.py texts    wiki/*.txt books.jsonl --out shards/text [--unit paragraph|line|file]
    python tools/make_shards.py captions coco/captions_train2017.json --image-root coco/train2017 --out shards/coco

Prints the brace pattern to put in a stream's ``shards:`` and a summary of samples written and skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from momo_ds.data import shard_writer as sw  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--prefix", default="train", help="shard name prefix (train, val...)")
    common.add_argument("--shard-size", type=int, default=None, help="samples per shard")
    img = sub.add_parser("images", parents=[common], help="image folder with one sub-folder per class")
    img.add_argument("--root", required=True)
    img.add_argument("--class-index", default=None, help="class_index.json to reuse (e.g. the train split's)")
    txt = sub.add_parser("texts", parents=[common], help=".txt / .jsonl documents")
    txt.add_argument("paths", nargs="+")
    txt.add_argument("--unit", default="paragraph", choices=["paragraph", "line", "file"], help=".txt documents")
    txt.add_argument("--text-field", default="text", help="field of .jsonl records")
    cap = sub.add_parser("captions", parents=[common], help="JSONL / CSV / TSV / COCO captions JSON")
    cap.add_argument("path")
    cap.add_argument("--image-root", default=None, help="folder of relative image paths (default: file's folder)")
    cap.add_argument("--image-field", default=None)
    cap.add_argument("--caption-field", default=None)
    for s in (img, cap):
        s.add_argument("--seed", type=int, default=0, help="shuffle seed for the sample order")
        s.add_argument("--no-shuffle", action="store_true")
        s.add_argument("--no-verify", action="store_true", help="do not open images to check them")
    return p.parse_args(argv)


def run(args: argparse.Namespace, console: Console) -> sw.ShardSummary:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        if args.command == "images":
            import json

            root = Path(args.root)
            total = sum(1 for c in root.iterdir() if c.is_dir() for f in c.rglob("*") if f.is_file())
            task = bar.add_task(f"images {root}", total=total)
            index = json.loads(Path(args.class_index).read_text()) if args.class_index else None
            return sw.write_image_folder(root, args.out, prefix=args.prefix, shard_size=args.shard_size or 1000,
                                         shuffle_seed=None if args.no_shuffle else args.seed,
                                         verify=not args.no_verify, class_index=index,
                                         progress=lambda n: bar.advance(task, n))
        if args.command == "texts":
            task = bar.add_task("text files", total=len(args.paths))
            return sw.write_texts(args.paths, args.out, prefix=args.prefix, shard_size=args.shard_size or 10000,
                                  unit=args.unit, text_field=args.text_field, progress=lambda n: bar.advance(task, n))
        records, _ = sw.read_caption_records(args.path, image_field=args.image_field,
                                             caption_field=args.caption_field)
        task = bar.add_task(f"captions {args.path}", total=len(records))
        return sw.write_captions(args.path, args.out, image_root=args.image_root, prefix=args.prefix,
                                 shard_size=args.shard_size or 1000, image_field=args.image_field,
                                 caption_field=args.caption_field, verify=not args.no_verify,
                                 shuffle_seed=None if args.no_shuffle else args.seed,
                                 progress=lambda n: bar.advance(task, n))


def print_summary(summary: sw.ShardSummary, console: Console) -> None:
    table = Table(title="make_shards summary")
    table.add_column("item")
    table.add_column("count", justify="right")
    table.add_row("samples written", str(summary.written))
    table.add_row("shards", str(len(summary.shards)))
    for reason, n in summary.skipped.items():
        table.add_row(f"skipped: {reason}", str(n))
    console.print(table)
    for k, v in summary.extra.items():
        console.print(f"{k}: {v}")
    console.print(f"shards: {summary.pattern or '(none written)'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=False)
    summary = run(args, console)
    print_summary(summary, console)
    return 0 if summary.written else 1


if __name__ == "__main__":
    sys.exit(main())
