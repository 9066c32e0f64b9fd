#!/usr/bin/env python
"""Evaluate an exported MoMo encoder.

    python tools/evaluate.py --encoder runs/momo-tiny/stage3/encoder.safetensors --task retrieval \
        --pairs 'runs/momo-tiny/data/pair/val-{000000..000001}.tar' --json eval.json
    python tools/evaluate.py --encoder ... --task linear_probe --train 'in1k/train-{...}.tar' --val 'in1k/val-{...}.tar'
    python tools/evaluate.py --encoder ... --task glue --glue_task sst2 --train SST-2/train.tsv --val SST-2/dev.tsv
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from momo_ds.eval.runner import TASKS, run_task, write_report  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", required=True, help="<out>/stageN/encoder.safetensors (its .json beside it)")
    p.add_argument("--task", required=True, nargs="+", help=f"one or more of: {', '.join(TASKS)}")
    p.add_argument("--pairs", nargs="*", default=[], help="pair shards (retrieval)")
    p.add_argument("--train", nargs="*", default=[], help="train shards (linear_probe) or file (glue)")
    p.add_argument("--val", nargs="*", default=[], help="validation shards (linear_probe) or file (glue)")
    p.add_argument("--glue_task", default="", help="cola sst2 mrpc qqp stsb mnli qnli rte wnli")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer recorded with the encoder")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="glue fine-tuning epochs")
    p.add_argument("--lr", type=float, default=5e-5, help="glue fine-tuning learning rate")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    import torch

    from momo_ds.eval.encoder import load_encoder

    try:
        device = torch.device(args.device)
        enc = load_encoder(args.encoder, device)
        results = {}
        for task in args.task:
            extra = {"epochs": args.epochs, "lr": args.lr} if task == "glue" else {}
            results[task] = run_task(enc, task, pairs=args.pairs, train=args.train, val=args.val,
                                     glue_task=args.glue_task, tokenizer=args.tokenizer,
                                     batch_size=args.batch_size, device=device, **extra)
    except ValueError as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
