"""One stream on one loader slot: raw samples → decoded, augmented samples → masked micro-batches.

A *slot* is (rank, worker). ``StreamDataset`` runs in each DataLoader worker (or in-process with 0 workers) and
yields ``(batch, meta)`` forever (training) or for one ordered pass (evaluation). ``meta`` is the side channel to
the main process: the slot's position *after* this batch and its cumulative skip counts.

Position = [epoch, raw, window, batches]: the next raw sample (index in the slot's shuffled epoch stream), the
next window of that document (text streams split long documents), and the slot's batch count. A slot started from
a position rebuilds that epoch's pipeline, drops ``raw`` raw samples without decoding them, and continues:
per-sample randomness is seeded from (seed, stream, epoch, slot, raw index) and masks from (seed, stream, slot,
batch count), so the batches are bitwise those the uninterrupted slot would have produced.

Replay (elastic restore, see elastic.py): a slot can first play *segments* of another layout's slots, each from a
saved position to the end of a given epoch, with that slot's shard split, shuffle and sample seeds, before its
own position; ``meta["replay"]`` then carries the segments left, the current one at its consumed position.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from ..config import StreamConfig
from .collate import collate_images, collate_pairs, collate_texts
from .decode import check_members, decode_image, decode_label, decode_text
from .errors import DataError, SampleError, SkipStats
from .rng import isolated_global_rng, mix_seed, torch_generator
from .shards import TarErrorCounter, epoch_shards, raw_samples, split_for_slot
from .transforms import build_image_transform

MAX_EMPTY_EPOCHS = 10  # a slot that sees this many consecutive empty epochs has no data: fail instead of spinning


@dataclass
class StreamSpec:
    """Everything a worker needs to produce one stream's batches (picklable): the stream's recipe entry and where
    this rank reads it."""

    stream: StreamConfig  # name, kind, batch size, augmentation, mask ratios, text length, repeat
    urls: list[str]  # expanded shard URLs
    image_size: int
    patch_size: int
    seed: int = 0
    shuffle_buffer: int = 2000
    rank: int = 0
    world_size: int = 1
    train: bool = True  # False: one ordered pass, no augmentation, no masks, partial last batch, text truncated

    @property
    def key(self) -> str:
        return f"{self.stream.name}/{self.stream.kind}"


class SampleProcessor:
    """Raw sample → list of model samples (several for a long text document or, in evaluation, for an image with
    several captions); raises SampleError."""

    def __init__(self, spec: StreamSpec, tokenizer):
        self.spec = spec
        self.tokenizer = tokenizer
        augment = spec.stream.augment if spec.train else "none"
        self.random = augment != "none"
        self.transform = None if spec.stream.kind == "text" else build_image_transform(augment, spec.image_size, spec.stream.kind)
        self.windows = spec.train and spec.stream.kind == "text"

    def _tokens(self, data: bytes) -> list[list[int]]:
        ids = self.tokenizer.encode_one(decode_text(data))
        if not ids:
            raise SampleError(SkipStats.EMPTY_TEXT, "no tokens")
        n = self.spec.stream.max_text_len
        if self.windows:
            return [ids[i: i + n] for i in range(0, len(ids), n)]
        return [ids[:n]]

    def _captions(self, data: bytes, seed: int) -> list[list[int]]:
        """Token ids of a pair's captions: one per non-empty line (tools/make_shards.py stores every caption of an
        image in one txt member); captions that tokenise to nothing are dropped.

        Training keeps one, drawn from the sample's seed with a generator of its own, and draws nothing for a single
        caption: single-caption shards give exactly the batches they always gave. Evaluation keeps every caption.
        """
        lines = [line.strip() for line in decode_text(data).split("\n")]
        ids = [t for t in map(self.tokenizer.encode_one, filter(None, lines)) if t]
        if not ids:
            raise SampleError(SkipStats.EMPTY_TEXT, "no tokens")
        if self.spec.train and len(ids) > 1:
            ids = [ids[random.Random(mix_seed(seed, "caption")).randrange(len(ids))]]
        return [t[: self.spec.stream.max_text_len] for t in ids]

    def _image(self, data: bytes, seed: int):
        img = decode_image(data)
        if not self.random:
            return self.transform(img)
        with isolated_global_rng(seed):
            return self.transform(img)

    def __call__(self, raw: dict, seed: int) -> list:
        img_ext, txt_ext, cls_ext = check_members(raw, self.spec.stream.kind)
        if self.spec.stream.kind == "text":
            return self._tokens(raw[txt_ext])
        if self.spec.stream.kind == "pair":
            captions = self._captions(raw[txt_ext], seed)
            x = self._image(raw[img_ext], seed)
            return [(x, ids) for ids in captions]
        label = decode_label(raw[cls_ext]) if cls_ext else None
        return [(self._image(raw[img_ext], seed), label)]


def collate_stream(spec: StreamSpec, items: list, pad_id: int, seed: int):
    """Model samples → the stream's batch type, masks drawn with a generator seeded by ``seed``."""
    g = torch_generator(seed)
    image_ratio = spec.stream.image_mask_ratio if spec.train else 0.0
    text_ratio = spec.stream.text_mask_ratio if spec.train else 0.0
    if spec.stream.kind == "image":
        return collate_images([x for x, _ in items], [y for _, y in items], spec.patch_size, image_ratio, g)
    if spec.stream.kind == "text":
        return collate_texts(items, pad_id, text_ratio, g)
    align_ratio = spec.stream.align_mask_ratio if spec.train else None
    return collate_pairs([x for x, _ in items], [t for _, t in items], spec.patch_size, pad_id, image_ratio,
                         text_ratio, g, align_ratio)


class StreamDataset(IterableDataset):
    """Yields ``(batch, meta)``; ``starts[w]`` is the start position of logical worker w, ``replays[w]`` the
    replay segments it plays first (elastic restore, see elastic.py; none by default).

    rotation: physical worker p plays logical worker ``(p + rotation) % num_workers``. The DataLoader always
    asks worker 0 first; after a restore the next batch must come from logical worker ``batches % num_workers``.
    """

    def __init__(self, spec: StreamSpec, tokenizer, starts: Optional[list[list[int]]] = None, rotation: int = 0,
                 replays: Optional[list[list[dict]]] = None):
        super().__init__()
        self.spec = spec
        self.tokenizer = tokenizer
        self.starts = starts
        self.rotation = rotation
        self.replays = replays

    def __iter__(self) -> Iterator[tuple[object, dict]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = (worker + self.rotation) % workers
        start = list(self.starts[logical]) if self.starts else [0, 0, 0, 0]
        replay = self.replays[logical] if self.replays else ()
        return self.iter_slot(logical, workers, start, replay)

    def _raw_epoch(self, epoch: int, layout: tuple[int, int, int, int], counter: TarErrorCounter) -> Iterator[dict]:
        """Raw samples of ``epoch`` for the slot ``layout = (rank, world_size, worker, workers)``."""
        s = self.spec
        rank, world_size, worker, workers = layout
        slot = rank * workers + worker
        shuffle_seed = mix_seed(s.seed, s.key, "shuffle", epoch, slot) if s.train else None
        if s.stream.resampled and s.train:
            draws = max(1, round(s.stream.repeat * len(s.urls) / (world_size * workers)))
            return raw_samples([], handler=counter, shuffle_buffer=s.shuffle_buffer, shuffle_seed=shuffle_seed,
                               resample=(s.urls, draws, mix_seed(s.seed, s.key, "resample", epoch, slot)))
        window = epoch_shards(s.urls, epoch, repeat=s.stream.repeat, seed=s.seed, key=s.key, shuffle=s.train)
        shards, filters = split_for_slot(window, rank, world_size, worker, workers)
        return raw_samples(shards, handler=counter, filters=filters, shuffle_buffer=s.shuffle_buffer,
                           shuffle_seed=shuffle_seed)

    def _items(self, layout: tuple[int, int, int, int], start: list[int], until: Optional[int],
               processor: SampleProcessor, skips: SkipStats, counter: TarErrorCounter,
               replayed: bool = False) -> Iterator[tuple[object, list]]:
        """``(model sample, [epoch, raw, window] after it)`` of slot ``layout`` from ``start = [epoch, raw,
        window]`` to the end of epoch ``until`` (None: forever; evaluation: one pass)."""
        s = self.spec
        rank, world_size, worker, workers = layout
        slot = rank * workers + worker
        epoch, raw0, win0 = start
        empty_epochs = 0
        while until is None or epoch <= until:
            produced = False
            counter.active = raw0 == 0
            for raw_idx, raw in enumerate(self._raw_epoch(epoch, layout, counter)):
                if raw_idx < raw0:
                    continue  # fast-forward of a restored slot: no decoding
                counter.active = True
                try:
                    items = processor(raw, mix_seed(s.seed, s.key, "sample", epoch, slot, raw_idx))
                except SampleError as e:
                    skips.add(e.reason)
                    continue
                for j, item in enumerate(items):
                    if raw_idx == raw0 and j < win0:
                        continue
                    produced = True
                    yield item, ([epoch, raw_idx, j + 1] if j + 1 < len(items) else [epoch, raw_idx + 1, 0])
            raw0 = win0 = 0
            if not s.train:
                return
            epoch += 1
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs >= MAX_EMPTY_EPOCHS:
                where = f" (replayed on rank {s.rank})" if replayed else ""
                raise DataError(f"stream {s.stream.name!r}: rank {rank} worker {worker} got no usable sample in "
                                f"{MAX_EMPTY_EPOCHS} consecutive epochs ({len(s.urls)} shards for "
                                f"{world_size * workers} loader slots; skipped: {skips.as_dict()}){where}")

    def iter_slot(self, worker: int, workers: int, start: Optional[list[int]] = None,
                  replay: Sequence[dict] = ()) -> Iterator[tuple[object, dict]]:
        """Batches of logical worker ``worker`` of ``workers`` (on this spec's rank) from position ``start``.

        replay: segments ``{"slot": [rank, world_size, worker, workers], "pos": [epoch, raw, window], "until":
        epoch}`` played in order before ``start``: each is the rest of another layout's slot, to the end of epoch
        ``until``, with that slot's shard split, shuffle and sample seeds. Items of a partial batch carry over
        from one segment to the next (as from one epoch to the next); masks are drawn from this slot's own
        (slot, batch count). While a segment plays, ``meta`` has ``"replay"`` (the segments left, the current one
        at its consumed position) and ``pos`` stays ``start`` with the batch count updated.
        """
        s = self.spec
        epoch, raw0, win0, nbatch = start or [0, 0, 0, 0]
        slot = s.rank * workers + worker
        processor = SampleProcessor(s, self.tokenizer)
        pad_id = getattr(self.tokenizer, "pad_id", 0)
        skips = SkipStats()
        counter = TarErrorCounter(skips, s.stream.name)
        replay = [dict(seg) for seg in replay] if s.train else []
        segments = [(tuple(seg["slot"]), list(seg["pos"]), int(seg["until"])) for seg in replay]
        segments.append(((s.rank, s.world_size, worker, workers), [epoch, raw0, win0], None))
        buf: list = []
        for k, (layout, seg_start, until) in enumerate(segments):
            last = k == len(segments) - 1
            for item, after in self._items(layout, seg_start, until, processor, skips, counter, not last):
                buf.append(item)
                if len(buf) == s.stream.batch_size:
                    nbatch += 1
                    batch = collate_stream(s, buf, pad_id, mix_seed(s.seed, s.key, "mask", slot, nbatch))
                    buf = []
                    if last:
                        yield batch, {"slot": worker, "pos": after + [nbatch], "skips": skips.as_dict()}
                    else:
                        yield batch, {"slot": worker, "pos": [epoch, raw0, win0, nbatch], "skips": skips.as_dict(),
                                      "replay": [dict(replay[k], pos=after)] + [dict(r) for r in replay[k + 1:]]}
        if buf:  # evaluation only: the partial last batch
            nbatch += 1
            batch = collate_stream(s, buf, pad_id, 0)
            yield batch, {"slot": worker, "pos": [epoch + 1, 0, 0, nbatch], "skips": skips.as_dict()}
