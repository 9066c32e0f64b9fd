#!/usr/bin/env python
"""Export a trained MoMo encoder as a Hugging Face-style folder (config, weights, tokenizer, image processor).

    python tools/export.py --encoder runs/momo-tiny/stage3/encoder.safetensors --out momo-tiny-hf
    python tools/export.py --encoder runs/momo-tiny/stage3 --out momo-tiny-hf --overwrite --no-timm

The folder loads with ``momo_ds.load_pretrained(<out>)`` (bitwise the features of the export) and, with its
timm_model.safetensors, with ``timm.create_model(**momo_ds.model.hf_export.timm_create_kwargs(<out>))``.
Exit status 2 on bad input (one line on stderr).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", required=True,
                   help="<out>/stageN/encoder.safetensors (its .json beside it), its stage folder, or an exported "
                        "folder")
    p.add_argument("--out", required=True, help="folder to write (must not exist unless --overwrite)")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer recorded with the encoder")
    timm = p.add_mutually_exclusive_group()
    timm.add_argument("--timm", dest="timm", action="store_true", default=None,
                      help="require the timm image tower (timm_model.safetensors); default: written when timm's "
                           "ViT can express the model")
    timm.add_argument("--no-timm", dest="timm", action="store_false", help="do not write the timm image tower")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from momo_ds.model.hf_export import TIMM_WEIGHTS, save_pretrained

    try:
        out = save_pretrained(args.encoder, args.out, tokenizer=args.tokenizer, timm=args.timm,
                              overwrite=args.overwrite)
    except ValueError as e:  # bad input: one line, no traceback
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    files = sorted(f.name for f in out.iterdir())
    print(f"wrote {out}: {', '.join(files)}")
    if TIMM_WEIGHTS not in files:
        print("note: no timm image tower written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
