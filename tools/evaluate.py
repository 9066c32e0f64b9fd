#!/usr/bin/env python
"""Evaluate an exported MoMo encoder.

    python tools/evaluate.py --encoder runs/momo-tiny/stage3/encoder.safetensors --task retrieval \
        --pairs 'runs/momo-tiny/data/pair/val-{000000..000001}.tar' --json eval.json
    python tools/evaluate.py --encoder ... --task retrieval --karpathy coco/dataset_coco.json --images coco
    python tools/evaluate.py --encoder ... --task itm --pairs 'runs/momo-tiny/data/pair/val-{000000..000001}.tar'
    python tools/evaluate.py --encoder ... --task linear_probe --train 'in1k/train-{...}.tar' --val 'in1k/val-{...}.tar'
    python tools/evaluate.py --encoder ... --task glue --glue_task mrpc --train MRPC/train.tsv --val MRPC/dev.tsv
    python tools/evaluate.py --encoder ... --task glue --glue_dir glue_data           # 8 tasks x 4 learning rates
    python tools/evaluate.py --encoder ... --task vqa --vqa vqav2                     # VQAv2 fine-tuning
    python tools/evaluate.py --encoder ... --suite paper --data evaldata --json out/paper.json   # + out/paper.md

Several tasks in one command run one after another; one that fails is reported as {"error": ...} in --json beside
the finished ones, and the exit status is non-zero (2: bad input, 1: anything else).
"""
import argparse
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from momo_ds.eval.runner import (DEFAULT_MAX_LEN, TASKS, check_task, run_task, text_max_len,  # noqa: E402
                                 write_report)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", required=True, help="<out>/stageN/encoder.safetensors (its .json beside it)")
    p.add_argument("--task", nargs="+", default=[], help=f"one or more of: {', '.join(TASKS)}")
    p.add_argument("--suite", choices=["paper"], default=None,
                   help="paper: every evaluation of the paper's Table 2 that --data holds, and a Markdown table "
                        "beside the paper's MoMo and FLAVA rows (--markdown)")
    p.add_argument("--data", default=None, help="--suite folder: vqa/ coco/ flickr30k/ glue/ imagenet/ "
                                                "(momo_ds/eval/suite.py has the layout)")
    p.add_argument("--markdown", default=None, help="--suite: write the Table-2 report here (default: beside "
                                                    "--json, else printed only)")
    p.add_argument("--pairs", nargs="*", default=[], help="pair shards (retrieval, itm)")
    p.add_argument("--karpathy", default="", help="retrieval / itm from a Karpathy split file instead of shards: "
                                                   "dataset_coco.json (COCO 5k test) or dataset_flickr30k.json (1k)")
    p.add_argument("--images", default=None, help="image folder of --karpathy (COCO: the folder holding val2014/; "
                                                  "Flickr30k: flickr30k-images/); default: the file's folder")
    p.add_argument("--split", default="test", help="Karpathy split (train restval val test); default test")
    p.add_argument("--vqa", default="", help="vqa: a folder in the VQAv2 layout (questions + annotations JSON, "
                                             "train2014/ val2014/ images, or --images shards keyed by image id)")
    p.add_argument("--glue_dir", default="", help="glue: the GLUE download folder: runs every task it holds over "
                                                  "the --lrs grid (BERT's protocol) instead of one --glue_task")
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 3e-5, 4e-5, 5e-5], help="--glue_dir grid")
    p.add_argument("--train", nargs="*", default=[], help="train shards (linear_probe) or file (glue)")
    p.add_argument("--val", nargs="*", default=[], help="validation shards (linear_probe) or file (glue)")
    p.add_argument("--glue_task", default="", help="cola sst2 mrpc qqp stsb mnli qnli rte wnli (or SST-2, STS-B, ...)")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer recorded with the encoder")
    p.add_argument("--max_len", type=int, default=None,
                   help=f"tokens per text (glue inputs, retrieval / itm captions); default: min({DEFAULT_MAX_LEN}, the "
                        "encoder's max_text_len)")
    p.add_argument("--batch_size", type=int, default=256, help="feature batch (retrieval, itm, linear_probe)")
    p.add_argument("--epochs", type=int, default=3, help="glue fine-tuning epochs")
    p.add_argument("--lr", type=float, default=5e-5, help="glue fine-tuning learning rate")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def device_of(name: str):
    from momo_ds.eval.encoder import parse_device

    return parse_device(name, "--device")


def check_output(path: Optional[str]) -> None:
    """Fail before evaluating: a --json that cannot be written would otherwise lose hours of finished results."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--json {path} is a directory; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--json {path}: cannot create its folder ({e.strerror})") from None


def run_tasks(enc, args: argparse.Namespace, device, max_len: int) -> tuple[dict[str, Any], int]:
    """Every requested task in order. One that fails is recorded as {"error": "<one line>"} and the rest still
    run, so a crash in the last task keeps the results of the first; -> (results, exit status)."""
    results: dict[str, Any] = {}
    code = 0
    for task in args.task:
        extra = {"epochs": args.epochs, "lr": args.lr, "lrs": args.lrs} if task == "glue" else {}
        try:
            results[task] = run_task(enc, task, pairs=args.pairs, train=args.train, val=args.val,
                                     glue_task=args.glue_task, tokenizer=args.tokenizer, batch_size=args.batch_size,
                                     max_len=max_len, device=device, karpathy=args.karpathy, images=args.images,
                                     split=args.split, glue_dir=args.glue_dir, vqa=args.vqa, **extra)
        except Exception as e:  # recorded and reported, so the other tasks' results survive
            bad_input = isinstance(e, ValueError)
            if not bad_input:
                traceback.print_exc()  # not the user's input: keep the trace for a bug report
            results[task] = {"error": one_line(e) if bad_input else f"{type(e).__name__}: {one_line(e)}"}
            print(f"error: {task}: {results[task]['error']}", file=sys.stderr)
            code = code or (2 if bad_input else 1)
    return results, code


def main(argv=None) -> int:
    args = parse_args(argv)
    from momo_ds.eval.encoder import load_encoder

    try:
        device = device_of(args.device)
        check_output(args.json)
        enc = load_encoder(args.encoder, device)
        max_len = text_max_len(enc, args.max_len)
        for task in args.task:
            check_task(task, pairs=args.pairs, train=args.train, val=args.val, glue_task=args.glue_task,
                       has_itm_head=enc.has_itm_head, karpathy=args.karpathy, glue_dir=args.glue_dir,
                       vqa=args.vqa)
        if not args.task and not args.suite:
            raise ValueError("give --task (one or more) or --suite paper")
        if args.suite and not args.data:
            raise ValueError("--suite paper needs --data (a folder; see momo_ds/eval/suite.py for its layout)")
    except ValueError as e:  # bad input: one line, no traceback
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.suite:
        return run_suite(enc, args, device, max_len)
    results, code = run_tasks(enc, args, device, max_len)
    write_report(results, args.json)
    return code


def run_suite(enc, args: argparse.Namespace, device, max_len: int) -> int:
    """--suite paper: every part of --data that is present, then the JSON and the Markdown Table-2 report."""
    from momo_ds.eval.paper import markdown_table
    from momo_ds.eval.suite import run_paper_suite

    try:
        results, code = run_paper_suite(enc, args.data, say=lambda m: print(m, file=sys.stderr, flush=True),
                                        device=device, batch_size=args.batch_size, max_len=max_len,
                                        tokenizer=args.tokenizer, glue={"epochs": args.epochs, "lrs": args.lrs})
    except ValueError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    table = markdown_table(results, name=f"ours ({Path(args.encoder).parent.name or 'encoder'})")
    print(table)
    markdown = args.markdown or (str(Path(args.json).with_suffix(".md")) if args.json else None)
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(f"# momo-ds evaluation: {args.encoder}\n\n{table}\n")
    write_report({k: v for k, v in results.items() if k != "glue"} | _glue_rows(results.get("glue")), args.json)
    return code


def _glue_rows(glue: Optional[dict]) -> dict[str, Any]:
    """The suite's GLUE results as one report entry per task (the grid stays in the JSON under its task)."""
    if not isinstance(glue, dict) or "error" in glue:
        return {} if glue is None else {"glue": glue}
    return {f"glue/{t}": m for t, m in glue.items() if isinstance(m, dict)}


if __name__ == "__main__":
    sys.exit(main())
