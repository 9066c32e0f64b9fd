"""Small shard writers for tests and benchmarks (not used in training).

Each writer produces ``<dir>/<prefix>-NNNNNN.tar`` with ``per_shard`` samples and returns the list of shard
paths. Image samples carry ``cls = global sample index`` so that tests can identify every sample in a batch.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import webdataset as wds
from PIL import Image

WORDS = ("red blue green yellow large small circle square triangle above below the a of and shape picture "
         "there is with two next to it we see this shows").split()


def encode_image(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB image (JPEG-compresses like a photo, unlike white noise)."""
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def random_sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def write_samples(directory: Union[str, Path], samples: Sequence[dict], per_shard: int,
                  prefix: str = "shard") -> list[str]:
    """Write raw samples (``__key__`` + bytes members) into shards; returns the shard paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    with wds.ShardWriter(str(directory / f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0, encoder=False,
                         post=paths.append, mtime=0) as sink:
        for s in samples:
            sink.write(s)
    return paths


def image_samples(n: int, size: tuple[int, int] = (40, 36), seed: int = 0, fmt: str = "JPEG",
                  start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    return [{"__key__": f"s{start + i:07d}", ext: encode_image(smooth_image(rng, *size), fmt),
             "cls": str(start + i).encode()} for i in range(n)]


def text_samples(n: int, seed: int = 0, min_words: int = 3, max_words: int = 40, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"__key__": f"t{start + i:07d}",
             "txt": f"doc {start + i} {random_sentence(rng, rng.randint(min_words, max_words))}".encode()}
            for i in range(n)]


def pair_samples(n: int, size: tuple[int, int] = (40, 36), seed: int = 0, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = image_samples(n, size, seed, start=start)
    for s in out:
        s["txt"] = random_sentence(rng, rng.randint(2, 12)).encode()
    return out


def write_image_shards(directory, n: int, per_shard: int, size=(40, 36), seed: int = 0,
                       prefix: str = "img") -> list[str]:
    return write_samples(directory, image_samples(n, size, seed), per_shard, prefix)


def write_text_shards(directory, n: int, per_shard: int, seed: int = 0, max_words: int = 40,
                      prefix: str = "txt") -> list[str]:
    return write_samples(directory, text_samples(n, seed, max_words=max_words), per_shard, prefix)


def write_pair_shards(directory, n: int, per_shard: int, size=(40, 36), seed: int = 0,
                      prefix: str = "pair") -> list[str]:
    return write_samples(directory, pair_samples(n, size, seed), per_shard, prefix)


def train_test_tokenizer(path: Union[str, Path], extra: Optional[Sequence[str]] = None):
    """A tiny WordPiece over WORDS (and digits), for tests."""
    from .text import train_wordpiece

    corpus = [" ".join(WORDS)] * 4 + [" ".join(str(i) for i in range(100))] + list(extra or [])
    return train_wordpiece(corpus, path, vocab_size=200)
