#!/usr/bin/env python
"""Evaluate an exported MoMo encoder.

    python tools/evaluate.py --encoder runs/momo-tiny/stage3/encoder.safetensors --task retrieval \
        --pairs 'runs/momo-tiny/data/pair/val-{000000..000001}.tar' --json eval.json
    python tools/evaluate.py --encoder ... --task itm --pairs 'runs/momo-tiny/data/pair/val-{000000..000001}.tar'
    python tools/evaluate.py --encoder ... --task linear_probe --train 'in1k/train-{...}.tar' --val 'in1k/val-{...}.tar'
    python tools/evaluate.py --encoder ... --task glue --glue_task mrpc --train MRPC/train.tsv --val MRPC/dev.tsv

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
    p.add_argument("--task", required=True, nargs="+", help=f"one or more of: {', '.join(TASKS)}")
    p.add_argument("--pairs", nargs="*", default=[], help="pair shards (retrieval, itm)")
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
    """A usable torch device; a typo or a CPU-only machine is a one-line error, not a traceback mid-load."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: {one_line(e)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


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
        extra = {"epochs": args.epochs, "lr": args.lr} if task == "glue" else {}
        try:
            results[task] = run_task(enc, task, pairs=args.pairs, train=args.train, val=args.val,
                                     glue_task=args.glue_task, tokenizer=args.tokenizer, batch_size=args.batch_size,
                                     max_len=max_len, device=device, **extra)
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
                       has_itm_head=enc.has_itm_head)
    except ValueError as e:  # bad input: one line, no traceback
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    results, code = run_tasks(enc, args, device, max_len)
    write_report(results, args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
