#!/usr/bin/env python
"""How fast is one loader worker? Images/s (decode + augment + mask + collate, 224 px) and text samples/s.

    python benchmarks/bench_data.py [--quick] [--json results/bench_data.json] [--workers 4]

Shards are generated first (photo-like JPEGs of ImageNet's average size and file size, ~500x375 and ~100 KB;
text documents of 100-400 words) in a temporary folder. Each row runs one loader slot in-process and
single-threaded, i.e. one DataLoader worker, and times ``--batches`` batches after one warm-up batch.
``--workers N`` adds a row for the full stage loader with N worker processes (bounded by the machine's cores).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import make_console, make_report, print_table, write_json  # noqa: E402
from momo_ds.config import DataConfig, StreamConfig  # noqa: E402
from momo_ds.data import build_stage_loader, train_wordpiece  # noqa: E402
from momo_ds.data.fixtures import WORDS, encode_image, random_sentence, smooth_image, write_samples  # noqa: E402
from momo_ds.data.stream import StreamDataset, StreamSpec  # noqa: E402


def make_data(root: Path, n_images: int, n_docs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    images = []
    for i in range(n_images):
        w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        # Smooth colour field + grain: JPEG sizes near ImageNet's (~110 KB at ~500x375).
        pixels = np.asarray(smooth_image(rng, w, h), dtype=np.float32) + rng.normal(0, 12, (h, w, 3))
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        images.append({"__key__": f"i{i:07d}", "jpg": encode_image(img, "JPEG", quality=90),
                       "cls": str(i % 1000).encode(), "txt": random_sentence(prng, prng.randint(5, 20)).encode()})
    docs = [{"__key__": f"d{i:07d}", "txt": random_sentence(prng, prng.randint(100, 400)).encode()}
            for i in range(n_docs)]
    tok = train_wordpiece([" ".join(WORDS)], root / "tokenizer.json")
    return {"image": write_samples(root / "image", images, 64), "text": write_samples(root / "text", docs, 64),
            "tok": tok, "jpeg_kb": float(np.mean([len(s["jpg"]) for s in images]) / 1024)}


def time_slot(spec: StreamSpec, tok, batches: int) -> tuple[int, float]:
    """One loader slot in this process, single-threaded like a DataLoader worker (torch.set_num_threads(1))."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_slot(spec, tok, batches)
    finally:
        torch.set_num_threads(threads)


def _time_slot(spec: StreamSpec, tok, batches: int) -> tuple[int, float]:
    it = StreamDataset(spec, tok).iter_slot(0, 1)
    next(it)  # warm-up: opens shards, fills the shuffle buffer
    t0 = time.perf_counter()
    n = sum(next(it)[0].batch_size for _ in range(batches))
    return n, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny data, few batches")
    p.add_argument("--batches", type=int, default=None, help="timed batches per row")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="also time the stage loader with N worker processes")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    batches = args.batches or (2 if args.quick else 12)
    bs = 8 if args.quick else args.batch_size
    n_images = bs * (batches + 2)
    console = make_console()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = make_data(Path(tmp), n_images, n_images)
        console.print(f"generated {n_images} images ({data['jpeg_kb']:.0f} KB JPEG avg) and {n_images} documents "
                      f"in {time.perf_counter() - t0:.1f} s")
        common = dict(image_size=args.image_size, patch_size=args.patch_size, shuffle_buffer=bs)
        streams = [("image rrc + MIM mask 75%", StreamConfig(name="img", kind="image", batch_size=bs, augment="rrc"),
                    data["image"], "images"),
                   ("image randaug + MIM mask 75%", StreamConfig(name="img", kind="image", batch_size=bs,
                                                                augment="randaug"), data["image"], "images"),
                   ("pair randaug + CMM 75%/75%", StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0},
                                                              batch_size=bs, augment="randaug", text_mask_ratio=0.75,
                                                              max_text_len=64), data["image"], "pairs"),
                   ("text windows 128 + MLM 15%", StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0},
                                                              batch_size=bs, max_text_len=128), data["text"], "texts")]
        rows = [(name, StreamSpec(stream=stream, urls=urls, **common), unit) for name, stream, urls, unit in streams]
        for name, spec, unit in rows:
            n, dt = time_slot(spec, data["tok"], batches)
            results.append({"name": name, "unit": f"{unit}/s per worker", "per_second": n / dt, "samples": n,
                            "seconds": dt})
        if args.workers:
            cfg = DataConfig(streams=[StreamConfig(name="img", kind="image", shards=data["image"], batch_size=bs)],
                             image_size=args.image_size, num_workers=args.workers, shuffle_buffer=bs)
            with build_stage_loader(cfg, tokenizer=data["tok"], patch_size=args.patch_size) as loader:
                loader.next()
                t0 = time.perf_counter()
                n = sum(loader.next()["img"].batch_size for _ in range(batches))
                dt = time.perf_counter() - t0
            results.append({"name": f"stage loader, {args.workers} workers, rrc", "unit": "images/s total",
                            "per_second": n / dt, "samples": n, "seconds": dt})
    print_table(console, f"momo_ds.data loader throughput ({args.image_size} px, batch {bs})",
                ["stream", "throughput", "unit", "samples", "seconds"],
                [[r["name"], r["per_second"], r["unit"], r["samples"], r["seconds"]] for r in results])
    config = {"image_size": args.image_size, "patch_size": args.patch_size, "batch_size": bs, "batches": batches,
              "jpeg_kb_avg": data["jpeg_kb"], "workers": args.workers}
    write_json(args.json, make_report("bench_data", args, config, results), console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
