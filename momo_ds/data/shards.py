"""Shard lists and raw-sample pipelines (webdataset), split across ranks and loader workers.

Epochs. The infinite shard sequence of a stream is the concatenation of passes; pass p is the shard list shuffled
with a seed derived from (seed, stream, p). Epoch e is the window ``[e * L, (e + 1) * L)`` of that sequence with
``L = max(1, round(repeat * num_shards))``: ``repeat = 5`` makes one epoch five differently shuffled passes
(stage 2's ImageNet), ``repeat = 0.25`` a quarter pass (four consecutive epochs cover every shard once).

Splitting. Each epoch window is split first across ranks, then across the workers of a rank, at shard level
(``shards[rank::world]`` then ``[worker::workers]``, the same slicing as wds.split_by_node/split_by_worker, but
with the rank passed explicitly instead of read from torch.distributed). A level with fewer shards than
participants splits at sample level instead (every participant reads the shards and keeps every n-th sample), so
small datasets still give disjoint, complete coverage. Samples are then shuffled per slot with webdataset's
shuffle buffer and a derived seed.

A stream with ``resampled: true`` draws each slot's shards with replacement (wds.ResampledShards, deterministic seed) instead:
no epoch coverage guarantee, no duplicates-avoidance, never-empty slots — the usual choice for huge mixtures.
"""
from __future__ import annotations

import logging
import os
import random
from functools import partial
from itertools import islice
from typing import Iterable, Iterator, Optional, Sequence, Union

import webdataset as wds

from .errors import DataError, SkipStats
from .rng import mix_seed

log = logging.getLogger(__name__)


def expand_urls(urls: Union[str, Sequence[str]]) -> list[str]:
    """Brace-expand every pattern (and ``::``-separated lists); ``~`` is expanded for local paths."""
    out: list[str] = []
    for pattern in [urls] if isinstance(urls, str) else urls:
        for u in wds.shardlists.expand_urls(str(pattern)):
            out.append(os.path.expanduser(u) if is_local(u) else u)
    return out


def is_local(url: str) -> bool:
    return not url.startswith("pipe:") and ("://" not in url or url.startswith("file://"))


def local_path(url: str) -> str:
    for prefix in ("file://", "file:"):
        if url.startswith(prefix):
            return url[len(prefix):]
    return url


def check_shards(name: str, patterns: Sequence[str]) -> list[str]:
    """Expanded shard URLs of a stream; DataError if there are none or a local one does not exist."""
    urls = expand_urls(patterns)
    if not urls:
        raise DataError(f"stream {name!r}: no shards given")
    for u in urls:
        if is_local(u) and not os.path.isfile(local_path(u)):
            raise DataError(f"stream {name!r}: shard not found: {u}")
    return urls


def epoch_shards(urls: Sequence[str], epoch: int, *, repeat: float, seed: int, key: str,
                 shuffle: bool = True) -> list[str]:
    """The shard window of ``epoch`` (see module docstring). Without shuffle: the list itself, once."""
    n = len(urls)
    if not shuffle:
        return list(urls)
    length = max(1, round(repeat * n))
    start = epoch * length
    out: list[str] = []
    p, off = divmod(start, n)
    while len(out) < length:
        perm = list(urls)
        random.Random(mix_seed(seed, key, "pass", p)).shuffle(perm)
        out.extend(perm[off:])
        off, p = 0, p + 1
    return out[:length]


def split_for_slot(shards: Sequence[str], rank: int, world_size: int, worker: int,
                   num_workers: int) -> tuple[list[str], list[tuple[int, int]]]:
    """(shards this slot reads, sample-level filters [(offset, step)] applied in order)."""
    shards = list(shards)
    filters: list[tuple[int, int]] = []
    for index, count in ((rank, world_size), (worker, num_workers)):
        if count <= 1:
            continue
        if len(shards) >= count:
            shards = shards[index::count]
        else:
            filters.append((index, count))
    return shards, filters


class TarErrorCounter:
    """webdataset handler: count tar-level errors (and go on with the next member/shard) instead of raising."""

    def __init__(self, stats: SkipStats, stream: str):
        self.stats = stats
        self.stream = stream
        self.active = True  # False while a restored loader fast-forwards (already counted before the save)

    def __call__(self, exn: BaseException) -> bool:
        if self.active:
            missing = isinstance(exn, (FileNotFoundError, PermissionError, IsADirectoryError))
            self.stats.add(SkipStats.UNREADABLE_SHARD if missing else SkipStats.BROKEN_TAR)
            log.warning("stream %r: %s: %s", self.stream, type(exn).__name__, str(exn)[:200])
        return True


def _every(src: Iterable, offset: int, step: int) -> Iterator:
    return islice(src, offset, None, step)


def raw_samples(shards: Sequence[str], *, handler, filters: Sequence[tuple[int, int]] = (),
                shuffle_buffer: int = 0, shuffle_seed: Optional[int] = None,
                resample: Optional[tuple[Sequence[str], int, int]] = None) -> Iterator[dict]:
    """Raw samples (``{"__key__", "__url__", ext: bytes...}``) of the given shards, in a deterministic order.

    resample: (all urls, number of draws, seed) to draw shards with replacement instead of reading ``shards``.
    """
    if resample is not None:
        urls, draws, seed = resample
        source = wds.ResampledShards(list(urls), nshards=draws, seed=seed, deterministic=True, worker_seed=lambda: 0)
    else:
        source = wds.SimpleShardList(list(shards))
    stages = [source, wds.tarfile_to_samples(handler=handler)]
    stages += [partial(_every, offset=o, step=s) for o, s in filters]
    if shuffle_buffer > 1 and shuffle_seed is not None:
        stages.append(wds.shuffle(shuffle_buffer, initial=max(1, shuffle_buffer // 8),
                                  rng=random.Random(shuffle_seed)))
    return iter(wds.DataPipeline(*stages))
