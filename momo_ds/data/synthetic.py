"""Built-in synthetic dataset: coloured shapes with compositional captions and class labels (no download).

Every scene has one *large* object (its shape + colour is the class label: 4 shapes x 4 colours = 16 classes) and
0-2 *small* ones. Captions describe the scene with sizes, colours, counts and vertical relations only
("a large red circle above a small blue square", "a large green diamond and two small white squares below it"):
training flips images horizontally, so no left/right words. All shapes are mirror-symmetric and kept 7% away
from the borders (the evaluation centre crop removes 6.25% per side).

Layout under ``out_dir`` (each split written as a few shards, brace patterns in manifest.json)::

    image/{train,val}-NNNNNN.tar   jpg + cls            (stage 1/2 images, linear probe)
    pair/{train,val}-NNNNNN.tar    jpg + txt + cls      (stage 3 pairs, retrieval)
    text/{train,val}-NNNNNN.tar    txt documents of 3-8 sentences in the same language (stage 2/3 text)
    tokenizer.json                 WordPiece (vocab <= 512) trained on the train captions and documents
    manifest.json                  parameters, patterns, counts, classes; reused when parameters match
"""
from __future__ import annotations

import dataclasses
import io
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import webdataset as wds
from PIL import Image, ImageDraw

from .builds import build_dir_name, clean_stale_builds, publish_build, read_manifest, write_manifest
from .rng import mix_seed
from .text import train_wordpiece

VERSION = 1
SHAPES = ("circle", "square", "triangle", "diamond")
MAIN_COLOURS = {"red": (220, 50, 47), "green": (50, 170, 70), "blue": (40, 90, 225), "yellow": (240, 210, 40)}
EXTRA_COLOURS = {"purple": (150, 70, 200), "white": (235, 235, 235)}
COLOURS = {**MAIN_COLOURS, **EXTRA_COLOURS}
CLASSES = [f"{c} {s}" for s in SHAPES for c in MAIN_COLOURS]
MARGIN, GAP = 0.07, 0.03
TRAIN_SHARDS, VAL_SHARDS = 16, 4


@dataclass
class Obj:
    shape: str
    colour: str
    size: str  # large | small
    cx: float  # centre, unit coordinates (y grows downwards)
    cy: float
    h: float  # half-size

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass
class Scene:
    objects: list[Obj]
    background: tuple[int, int, int]

    @property
    def label(self) -> int:
        main = self.objects[0]
        return CLASSES.index(f"{main.colour} {main.shape}")


def random_scene(rng: random.Random) -> Scene:
    main_h = rng.uniform(0.17, 0.22)
    objs = [Obj(rng.choice(SHAPES), rng.choice(list(MAIN_COLOURS)), "large",
                rng.uniform(MARGIN + main_h, 1 - MARGIN - main_h), rng.uniform(MARGIN + main_h, 1 - MARGIN - main_h),
                main_h)]
    for _ in range(rng.choice((0, 1, 1, 2, 2))):
        h = rng.uniform(0.10, 0.13)
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        for _try in range(30):
            cx, cy = rng.uniform(MARGIN + h, 1 - MARGIN - h), rng.uniform(MARGIN + h, 1 - MARGIN - h)
            if all(abs(cx - o.cx) >= h + o.h + GAP or abs(cy - o.cy) >= h + o.h + GAP for o in objs):
                objs.append(Obj(shape, colour, "small", cx, cy, h))
                break
    grey = rng.randint(25, 85)
    return Scene(objs, tuple(min(255, max(0, grey + rng.randint(-8, 8))) for _ in range(3)))


def _relation(o: Obj, main: Obj) -> str:
    dy = o.cy - main.cy
    if dy < -0.5 * main.h:
        return "above"
    if dy > 0.5 * main.h:
        return "below"
    return "next to"


def _position(o: Obj) -> str:
    return "at the top" if o.cy < 0.4 else "at the bottom" if o.cy > 0.6 else "in the middle"


_INVERSE = {"above": "below", "below": "above", "next to": "next to"}


def caption(scene: Scene, rng: random.Random) -> str:
    """A compositional caption; always contains ``a large <colour> <shape>`` for the labelled object."""
    main, rest = scene.objects[0], scene.objects[1:]
    m = main.phrase()
    if not rest:
        return rng.choice([m, f"{m} {_position(main)}", f"there is {m} {_position(main)}", f"a picture of {m}"])
    rels = [_relation(o, main) for o in rest]
    if len(rest) == 1:
        s, r = rest[0].phrase(), rels[0]
        return rng.choice([f"{m} and {s} {r} it", f"{s} {r} {m}", f"{m} with {s} {r} it", f"{m} {_INVERSE[r]} {s}"])
    a, b = rest
    if (a.shape, a.colour) == (b.shape, b.colour) and rels[0] == rels[1]:
        return rng.choice([f"{m} and two small {a.colour} {a.shape}s {rels[0]} it",
                           f"two small {a.colour} {a.shape}s {rels[0]} {m}"])
    return rng.choice([f"{m} with {a.phrase()} {rels[0]} it and {b.phrase()} {rels[1]} it",
                       f"{a.phrase()} {rels[0]} {m} and {b.phrase()} {rels[1]} it"])


def document(rng: random.Random) -> str:
    """A text-only document: 3-8 sentences about scenes, in the same language as the captions."""
    sentences = []
    for _ in range(rng.randint(3, 8)):
        scene = random_scene(rng)
        main = scene.objects[0]
        if len(scene.objects) > 1 and rng.random() < 0.25:
            o = scene.objects[1]
            s = f"the large {main.colour} {main.shape} is bigger than the small {o.colour} {o.shape}"
        else:
            s = caption(scene, rng)
            if not s.startswith(("there is", "a picture")):
                s = rng.choice(["", "there is ", "we see ", "this picture shows "]) + s
        sentences.append(s[0].upper() + s[1:] + ".")
    return " ".join(sentences)


def _polygon(shape: str, cx: float, cy: float, h: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]  # diamond


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene (supersampled 2-4x below 128 px so that small shapes keep clean, anti-aliased edges)."""
    factor = min(4, math.ceil(128 / size))
    canvas = size * factor
    img = Image.new("RGB", (canvas, canvas), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        colour = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[o.colour])
        cx, cy, h = o.cx * canvas, o.cy * canvas, o.h * canvas
        if o.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=colour)
        elif o.shape == "square":
            k = h * 0.9  # equal area impression with the circle
            draw.rectangle([cx - k, cy - k, cx + k, cy + k], fill=colour)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, h), fill=colour)
    if factor > 1:
        img = img.reduce(factor)  # box filter: fast, and exact averaging of the supersampled pixels
    return img


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, subsampling=0)  # 4:4:4: no chroma bleeding at 32 px
    return buf.getvalue()


@dataclass
class SyntheticInfo:
    """Where the synthetic dataset lives: ``shards[kind][split]`` are absolute brace patterns."""

    root: str
    num: int
    image_size: int
    seed: int
    num_classes: int
    classes: list[str]
    shards: dict[str, dict[str, str]]
    counts: dict[str, dict[str, int]]
    tokenizer: str
    vocab_size: int


def _write_split(directory: Path, split: str, kind: str, n: int, num_shards: int, image_size: int,
                 seed: int) -> tuple[str, list[str]]:
    """Write one kind/split; returns (brace pattern relative to the dataset root, texts written)."""
    rng = random.Random(mix_seed(seed, "synthetic", kind, split))
    per_shard = math.ceil(n / num_shards)
    directory.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    with wds.ShardWriter(str(directory / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0, encoder=False,
                         mtime=0) as sink:
        for i in range(n):
            sample = {"__key__": f"{split}_{i:07d}"}
            if kind == "text":
                sample["txt"] = document(rng).encode()
                texts.append(sample["txt"].decode())
            else:
                scene = random_scene(rng)
                sample["jpg"] = _jpeg(render(scene, image_size, rng))
                sample["cls"] = str(scene.label).encode()
                if kind == "pair":
                    text = caption(scene, rng)
                    sample["txt"] = text.encode()
                    texts.append(text)
            sink.write(sample)
        written = sink.shard
    return f"{kind}/{split}-{{000000..{written - 1:06d}}}.tar", texts


def make_synthetic(out_dir: Union[str, Path], num: int = 4000, image_size: int = 32, seed: int = 0) -> SyntheticInfo:
    """Generate (or reuse, when manifest.json has the same parameters) the synthetic dataset under ``out_dir``.

    ``num`` samples per kind in the train split, ``max(64, num // 8)`` in the val split.
    """
    root = Path(out_dir).expanduser().resolve()
    params = {"version": VERSION, "num": int(num), "image_size": int(image_size), "seed": int(seed)}
    clean_stale_builds(root)
    cached = _load_manifest(root, params)
    if cached is not None:
        return cached
    if num < 1 or image_size < 8:
        raise ValueError(f"make_synthetic: num={num} must be >= 1 and image_size={image_size} >= 8")
    # Build in a private directory, then move files into place (concurrent callers write identical files).
    tmp = root / build_dir_name()
    try:
        return _generate(root, tmp, params, num, image_size, seed)
    except BaseException:  # a failed generation leaves nothing behind (a killed one: the next start removes it)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _generate(root: Path, tmp: Path, params: dict, num: int, image_size: int, seed: int) -> SyntheticInfo:
    nval = max(64, num // 8)
    shards: dict[str, dict[str, str]] = {}
    counts: dict[str, dict[str, int]] = {}
    corpus: list[str] = []
    for kind in ("image", "pair", "text"):
        shards[kind], counts[kind] = {}, {}
        for split, n, k in (("train", num, TRAIN_SHARDS), ("val", nval, VAL_SHARDS)):
            k = max(1, min(k, n // 16))
            shards[kind][split], texts = _write_split(tmp / kind, split, kind, n, k, image_size, seed)
            counts[kind][split] = n
            if split == "train":
                corpus += texts
    tok = train_wordpiece(corpus, tmp / "tokenizer.json", vocab_size=512)
    manifest = {"params": params, "num_classes": len(CLASSES), "classes": CLASSES, "shards": shards,
                "counts": counts, "tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size}
    publish_build(tmp, root)
    write_manifest(root, manifest)
    info = _load_manifest(root, params)
    assert info is not None
    return info


def _load_manifest(root: Path, params: dict) -> Optional[SyntheticInfo]:
    m = read_manifest(root, params)
    if m is None:
        return None
    shards = {k: {s: str(root / p) for s, p in v.items()} for k, v in m["shards"].items()}
    tokenizer = root / m["tokenizer"]
    if not tokenizer.is_file() or not all(Path(u).is_file() for k in shards.values() for p in k.values()
                                          for u in wds.shardlists.expand_urls(p)):
        return None
    return SyntheticInfo(root=str(root), num=params["num"], image_size=params["image_size"], seed=params["seed"],
                         num_classes=m["num_classes"], classes=m["classes"], shards=shards, counts=m["counts"],
                         tokenizer=str(tokenizer), vocab_size=m["vocab_size"])


def resolve_synthetic(data_cfg, data_dir: Union[str, Path]):
    """For ``data.synthetic``: generate/reuse the dataset in ``data_dir`` and fill every stream without shards
    (train split of its kind) or eval_shards (val split) and ``tokenizer: synthetic``. Returns (new DataConfig,
    SyntheticInfo or None)."""
    if not data_cfg.synthetic and data_cfg.tokenizer != "synthetic":
        return data_cfg, None
    info = make_synthetic(data_dir, num=data_cfg.synthetic_num, image_size=data_cfg.image_size, seed=data_cfg.seed)
    streams = [dataclasses.replace(s, shards=list(s.shards) or [info.shards[s.kind]["train"]],
                                   eval_shards=list(s.eval_shards) or [info.shards[s.kind]["val"]])
               for s in data_cfg.streams]
    tokenizer = info.tokenizer if data_cfg.tokenizer == "synthetic" else data_cfg.tokenizer
    return dataclasses.replace(data_cfg, streams=streams, tokenizer=tokenizer), info
