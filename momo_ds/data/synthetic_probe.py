"""Built-in *orientation* probe: a held-out image task on which an untrained encoder is near chance.

The pretraining set's 16 classes (colour x shape of the large object) are separated by colour statistics alone, so
a random-init encoder's features already probe at ~50 % there and say nothing about learning; a shape-only label
is not enough either (random features of edge patches still tell circles from squares: ~45 % of 4 classes).
Here the label is the direction a large triangle points to (up, right, down, left: 4 balanced classes, chance
25 %), and the cues that need no understanding of the object are removed: the object and the background take two
different colours of one palette (so which side of an edge is the object is not given by brightness), the
triangle's scale and position vary, and 0-2 small discs are scattered as clutter. Every direction has the same
three edge orientations, so a bag of local edge statistics cannot separate them; telling them apart needs to
know where the object's apex is relative to its base.

Layout under ``out_dir``: ``{train,val}-NNNNNN.tar`` (jpg + cls) and ``manifest.json`` (parameters, patterns,
counts); reused when the parameters match. The scenes come from their own seed stream, so building the probe never
changes the pretraining data.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import webdataset as wds

from .rng import mix_seed
from PIL import Image, ImageDraw

from .builds import build_dir_name, publish_build, read_manifest, write_manifest
from .synthetic import COLOURS, _jpeg

VERSION = 1
CLASSES = ["up", "right", "down", "left"]
PALETTE = [*COLOURS.values(), (60, 60, 60), (120, 120, 120)]


@dataclass
class ProbeInfo:
    root: str
    classes: list[str]
    shards: dict[str, str]  # split -> absolute brace pattern
    counts: dict[str, int]


def _triangle(cx: float, cy: float, h: float, direction: int) -> list[tuple[float, float]]:
    """An isosceles triangle of half-size h pointing CLASSES[direction] (rotated by 90 degrees per step)."""
    points = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]  # apex up
    for _ in range(direction):
        points = [(-y, x) for x, y in points]  # 90 degrees clockwise in image coordinates
    return [(cx + x * h, cy + y * h) for x, y in points]


def probe_image(rng: random.Random, label: int, size: int) -> Image.Image:
    """One probe image of class ``label``, drawn 4x larger and box-filtered down (clean edges at 32 px)."""
    canvas = size * 4
    background, colour = rng.sample(PALETTE, 2)
    img = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(img)
    h = rng.uniform(0.18, 0.30) * canvas
    margin = 0.06 * canvas + h
    draw.polygon(_triangle(rng.uniform(margin, canvas - margin), rng.uniform(margin, canvas - margin), h, label),
                 fill=colour)
    for _ in range(rng.randint(0, 2)):
        r = rng.uniform(0.03, 0.06) * canvas
        x, y = rng.uniform(r, canvas - r), rng.uniform(r, canvas - r)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rng.choice(PALETTE))
    return img.reduce(4)


def _samples(split: str, n: int, image_size: int, seed: int):
    rng = random.Random(mix_seed(seed, "synthetic-orientation-probe", split))
    for i in range(n):
        label = i % len(CLASSES)  # balanced: chance is exactly 1 / 4
        yield {"__key__": f"{split}_{i:07d}", "jpg": _jpeg(probe_image(rng, label, image_size)),
               "cls": str(label).encode()}


def _write(directory: Path, split: str, samples: Iterable[dict], per_shard: int) -> str:
    """Write one split's shards; -> its brace pattern relative to the probe root."""
    directory.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(directory / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0, encoder=False,
                         mtime=0) as sink:
        for sample in samples:
            sink.write(sample)
        written = sink.shard
    return f"{split}-{{000000..{written - 1:06d}}}.tar"


def make_orientation_probe(out_dir: Union[str, Path], image_size: int = 32, num_train: int = 2000, num_val: int = 1000,
                     seed: int = 0) -> ProbeInfo:
    """Generate (or reuse) the orientation probe under ``out_dir`` (e.g. ``<run>/data/probe``)."""
    root = Path(out_dir).expanduser().resolve()
    params = {"version": VERSION, "image_size": int(image_size), "num_train": int(num_train),
              "num_val": int(num_val), "seed": int(seed)}
    cached = _load(root, params)
    if cached is not None:
        return cached
    if min(num_train, num_val) < len(CLASSES) or image_size < 8:
        raise ValueError(f"make_orientation_probe: need >= {len(CLASSES)} samples per split and image_size >= 8")
    tmp = root / build_dir_name()
    try:
        shards = {split: _write(tmp, split, _samples(split, n, image_size, seed), per_shard=500)
                  for split, n in (("train", num_train), ("val", num_val))}
        publish_build(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"params": params, "classes": CLASSES, "shards": shards,
                "counts": {"train": num_train, "val": num_val}}
    write_manifest(root, manifest)
    info = _load(root, params)
    assert info is not None
    return info


def _load(root: Path, params: dict) -> ProbeInfo | None:
    m = read_manifest(root, params)
    if m is None:
        return None
    shards = {s: str(root / p) for s, p in m["shards"].items()}
    return ProbeInfo(root=str(root), classes=m["classes"], shards=shards, counts=m["counts"])
