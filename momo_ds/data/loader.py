"""Stage loader (one never-ending micro-batch stream per StreamConfig) with resumable state; eval loader.

    loader = build_stage_loader(data_cfg, tokenizer=tok, patch_size=16, rank=r, world_size=w)
    batches = loader.next()          # {stream name: ImageBatch | TextBatch | PairBatch}, data_cfg.streams order
    state = loader.state_dict()      # JSON-serialisable, per rank
    loader.load_state_dict(state)    # next() continues exactly where the saved loader was
    loader.load_elastic_state(states)  # every old rank's state, any old world size / workers (elastic.py)

Each stream has its own DataLoader with ``data_cfg.num_workers`` workers (0: in-process). Workers yield whole
batches in strict round robin; every batch carries its slot's position and cumulative skip counts (see
stream.py), so the main process always knows the exact position of every slot *as consumed by the trainer*
(prefetched batches are not counted) and the skip counts of all its workers.

State version 2 adds, only while an elastic restore is being played, ``"replay"`` to a stream's state: per slot
the segments of old slots still to play before its own position (elastic.py); version 1 states still load.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..config import DataConfig, StreamConfig
from . import elastic
from .errors import DataError, SampleError, SkipStats
from .shards import TarErrorCounter, check_shards, raw_samples
from .stream import SampleProcessor, StreamDataset, StreamSpec

log = logging.getLogger(__name__)
STATE_VERSION = 2
READS_VERSIONS = (1, 2)  # version 1: no "replay"


def probe_stream(spec: StreamSpec, tokenizer) -> None:
    """Start-up check: read the stream's shards in order until one sample decodes; DataError if none does."""
    processor = SampleProcessor(dataclasses.replace(spec, train=False), tokenizer)
    skips = SkipStats()
    for url in spec.urls:
        for raw in raw_samples([url], handler=TarErrorCounter(skips, spec.stream.name)):
            try:
                processor(raw, 0)
                return
            except SampleError as e:
                skips.add(e.reason)
    raise DataError(f"stream {spec.stream.name!r} ({spec.stream.kind}) yields no usable sample from its {len(spec.urls)} "
                    f"shard(s) (first: {spec.urls[0]}; skipped: {skips.as_dict() or 'nothing read'})")


def _make_spec(s: StreamConfig, data_cfg: DataConfig, patch_size: int, rank: int, world_size: int) -> StreamSpec:
    if data_cfg.image_size % patch_size:
        raise DataError(f"data.image_size={data_cfg.image_size} is not a multiple of patch_size={patch_size}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    if s.repeat <= 0:
        raise DataError(f"stream {s.name!r}: repeat={s.repeat} must be > 0")
    return StreamSpec(stream=s, urls=check_shards(s.name, s.shards), image_size=data_cfg.image_size,
                      patch_size=patch_size, seed=data_cfg.seed, shuffle_buffer=data_cfg.shuffle_buffer, rank=rank,
                      world_size=world_size)


class _ReportingDataset(IterableDataset):
    """Runs a StreamDataset in a DataLoader worker and hands a DataError over as data, ``(None, {"error":
    message})``: raised inside a worker, it would reach the trainer wrapped in the worker's traceback."""

    def __init__(self, dataset: StreamDataset):
        super().__init__()
        self.dataset = dataset

    def __iter__(self) -> Iterator[tuple[object, dict]]:
        try:
            yield from self.dataset
        except DataError as e:
            yield None, {"error": str(e)}


class _StreamRunner:
    """Main-process side of one stream: its DataLoader and the consumed position of every worker slot."""

    def __init__(self, spec: StreamSpec, tokenizer, num_workers: int, pin_memory: bool):
        self.spec = spec
        self.tokenizer = tokenizer
        self.num_workers = num_workers
        self.slots_n = max(1, num_workers)
        self.pin_memory = pin_memory
        self.slots = [[0, 0, 0, 0] for _ in range(self.slots_n)]
        self.replay: list[list[dict]] = [[] for _ in range(self.slots_n)]  # elastic restore segments per slot
        self.batches = 0
        self.base_skips = SkipStats()
        self.worker_skips: dict[int, dict] = {}
        self._loader: Optional[DataLoader] = None
        self._it: Optional[Iterator] = None

    def _start(self) -> None:
        ds = StreamDataset(self.spec, self.tokenizer, starts=[list(p) for p in self.slots],
                           rotation=self.batches % self.slots_n,
                           replays=[elastic.copy_segments(r) for r in self.replay] if any(self.replay) else None)
        if self.num_workers == 0:
            self._it = iter(ds)
        else:
            self._loader = DataLoader(_ReportingDataset(ds), batch_size=None, num_workers=self.num_workers,
                                      pin_memory=self.pin_memory, prefetch_factor=2)
            self._it = iter(self._loader)

    def next(self):
        if self._it is None:
            self._start()
        try:
            batch, meta = next(self._it)
        except DataError as e:  # in-process (0 workers)
            raise DataError(str(e), rank_local=True) from None
        if "error" in meta:
            raise DataError(meta["error"], rank_local=True)
        slot = meta["slot"]
        if slot != self.batches % self.slots_n:  # the exact-resume bookkeeping relies on strict round robin
            raise RuntimeError(f"stream {self.spec.stream.name!r}: batch from worker slot {slot}, expected "
                               f"{self.batches % self.slots_n}")
        self.slots[slot] = list(meta["pos"])
        self.replay[slot] = meta.get("replay", [])
        self.worker_skips[slot] = meta["skips"]
        self.batches += 1
        return batch

    def skips(self) -> SkipStats:
        total = self.base_skips.copy()
        for counts in self.worker_skips.values():
            total.update(counts)
        return total

    def epoch(self) -> int:
        """The lowest epoch a slot still reads (a slot replaying old slots: the lowest epoch of its segments)."""
        return min(min(seg["pos"][0] for seg in r) if r else p[0] for p, r in zip(self.slots, self.replay))

    def header(self) -> dict:
        """The layout fields of the state (what a saved state must match to be restored exactly)."""
        s = self.spec
        return {"kind": s.stream.kind, "seed": s.seed, "rank": s.rank, "world_size": s.world_size,
                "num_slots": self.slots_n, "batch_size": s.stream.batch_size, "num_shards": len(s.urls),
                "repeat": s.stream.repeat}

    def state_dict(self) -> dict:
        s = self.spec
        d = dict(self.header(), epoch=self.epoch(), batches=self.batches,
                 samples=self.batches * s.stream.batch_size, slots=[list(p) for p in self.slots],
                 skips=self.skips().as_dict())
        if any(self.replay):
            d["replay"] = [elastic.copy_segments(r) for r in self.replay]
        return d

    def load_state_dict(self, d: dict, strict: bool) -> None:
        s = self.spec
        expected = self.header()
        diff = {k: (d.get(k), v) for k, v in expected.items() if d.get(k) != v}
        self.shutdown()
        self.base_skips = SkipStats(d.get("skips", {}))
        self.worker_skips = {}
        self.replay = [[] for _ in range(self.slots_n)]
        if not diff:
            self.slots = [list(p) for p in d["slots"]]
            if d.get("replay"):
                self.replay = [elastic.copy_segments(r) for r in d["replay"]]
            self.batches = int(d["batches"])
            return
        changes = ", ".join(f"{k}: saved {a}, now {b}" for k, (a, b) in diff.items())
        msg = f"stream {s.stream.name!r}: saved loader state does not match ({changes})"
        if strict:
            raise DataError(msg + "; pass strict=False to restart at the saved epoch")
        log.warning("%s; restarting every worker slot at epoch %d", msg, max(p[0] for p in d["slots"]))
        epoch = max(p[0] for p in d["slots"])
        nbatch = max(p[3] for p in d["slots"])
        self.slots = [[epoch, 0, 0, nbatch] for _ in range(self.slots_n)]
        self.batches = int(d.get("batches", 0))

    def shutdown(self) -> None:
        it, self._it, self._loader = self._it, None, None
        if it is None:
            return
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        elif hasattr(it, "close"):
            it.close()


class StageLoader:
    """One micro-batch per stream per call of :meth:`next`; see the module docstring."""

    def __init__(self, data_cfg: DataConfig, *, tokenizer, patch_size: int, rank: int = 0, world_size: int = 1,
                 pin_memory: Optional[bool] = None, check: bool = True):
        data_cfg.validate()
        if pin_memory is None:
            pin_memory = torch.cuda.is_available() and data_cfg.num_workers > 0
        specs = [_make_spec(s, data_cfg, patch_size, rank, world_size) for s in data_cfg.streams]
        if check:
            for spec in specs:
                probe_stream(spec, tokenizer)
        self.streams = [_StreamRunner(sp, tokenizer, data_cfg.num_workers, pin_memory) for sp in specs]

    def next(self) -> dict:
        return {r.spec.stream.name: r.next() for r in self.streams}

    def __iter__(self) -> "StageLoader":
        return self

    def __next__(self) -> dict:
        return self.next()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "streams": {r.spec.stream.name: r.state_dict() for r in self.streams}}

    def load_state_dict(self, d: dict, strict: bool = True) -> None:
        """Restore positions; with ``strict`` a layout change (workers, world size, seed, shards...) is an error."""
        _check_version(d)
        saved = d["streams"]
        missing = [r.spec.stream.name for r in self.streams if r.spec.stream.name not in saved]
        if missing and strict:
            raise DataError(f"loader state has no stream(s) {missing}; saved: {sorted(saved)}")
        for r in self.streams:
            if r.spec.stream.name in saved:
                r.load_state_dict(saved[r.spec.stream.name], strict)

    def load_elastic_state(self, states: Sequence[dict]) -> None:
        """Resume from the saved states of *every* rank of a run (``states``: one ``state_dict()`` per old rank,
        any order) whose world size, num_workers or stream batch sizes may differ from this loader's.

        Per stream: an unchanged layout restores exactly (``load_state_dict`` of this rank's state); otherwise
        the old slots' unconsumed samples up to the highest saved epoch E are replayed once over the new slots,
        which then go on at epoch E + 1 in the new layout; see the guarantee in :mod:`momo_ds.data.elastic`.
        DataError when a state is missing a stream, the ranks are not one complete set, or the data differs
        (kind, seed, number of shards, repeat).
        """
        if not states:
            raise DataError("elastic restore: no saved loader state given")
        for d in states:
            _check_version(d)
        for r in self.streams:
            name = r.spec.stream.name
            missing = [i for i, d in enumerate(states) if name not in d["streams"]]
            if missing:
                raise DataError(f"loader state(s) {missing} have no stream {name!r}")
            olds = elastic.ordered_stream_states(name, [d["streams"][name] for d in states])
            header = r.header()
            if elastic.same_layout(olds, header):
                r.load_state_dict(olds[r.spec.rank], strict=True)
            else:
                new = elastic.remap_stream(name, olds, header, resampled=r.spec.stream.resampled)
                log.info("stream %r: elastic restore from %d rank(s) x %d slot(s) to rank %d of %d x %d slot(s), "
                         "new layout from epoch %d", name, olds[0]["world_size"], olds[0]["num_slots"],
                         r.spec.rank, r.spec.world_size, r.slots_n, new["slots"][0][0])
                r.load_state_dict(new, strict=True)

    def skip_counts(self) -> dict[str, dict[str, int]]:
        return {r.spec.stream.name: r.skips().as_dict() for r in self.streams}

    def samples_seen(self) -> dict[str, int]:
        return {r.spec.stream.name: r.batches * r.spec.stream.batch_size for r in self.streams}

    def epochs(self) -> dict[str, int]:
        """Per stream, the epoch every worker slot has reached (the lowest slot epoch)."""
        return {r.spec.stream.name: r.epoch() for r in self.streams}

    def close(self) -> None:
        for r in self.streams:
            r.shutdown()

    def __enter__(self) -> "StageLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _check_version(d: dict) -> None:
    if d.get("version") not in READS_VERSIONS:
        raise DataError(f"loader state version {d.get('version')!r}; this code reads {list(READS_VERSIONS)}")


def check_streams(data_cfg: DataConfig) -> None:
    """Cheap start-up check (no reading): every stream has shards and every local shard exists (DataError)."""
    for s in data_cfg.streams:
        check_shards(s.name, s.shards)


def build_stage_loader(data_cfg: DataConfig, *, tokenizer, patch_size: int, rank: int = 0, world_size: int = 1,
                       pin_memory: Optional[bool] = None) -> StageLoader:
    """The training loader of a stage (checks every stream's shards at start; raises DataError)."""
    return StageLoader(data_cfg, tokenizer=tokenizer, patch_size=patch_size, rank=rank, world_size=world_size,
                       pin_memory=pin_memory)


class EvalLoader:
    """One ordered pass per iteration (no augmentation, no masks, labels kept, last batch may be partial)."""

    def __init__(self, spec: StreamSpec, tokenizer, num_workers: int = 0):
        self.spec = spec
        self.tokenizer = tokenizer
        self.num_workers = num_workers
        self._latest: dict[int, dict] = {}

    def __iter__(self) -> Iterator:
        ds = StreamDataset(self.spec, self.tokenizer)
        source = iter(ds) if self.num_workers == 0 else iter(
            DataLoader(ds, batch_size=None, num_workers=self.num_workers))
        self._latest: dict[int, dict] = {}
        for batch, meta in source:
            self._latest[meta["slot"]] = meta["skips"]
            yield batch

    def skip_counts(self) -> dict[str, int]:
        """Skip counts of the last (or current) pass, as far as its batches were consumed."""
        total = SkipStats()
        for counts in self._latest.values():
            total.update(counts)
        return total.as_dict()


def build_eval_loader(urls: Sequence[str], kind: str, *, tokenizer, image_size: int, patch_size: int,
                      batch_size: int, max_text_len: int = 64, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0, name: str = "eval") -> EvalLoader:
    """A finite evaluation loader over ``urls`` (split across ranks: disjoint, complete)."""
    if kind not in ("image", "text", "pair"):
        raise DataError(f"eval kind {kind!r}; valid: image, text, pair")
    if image_size % patch_size:
        raise DataError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    stream = StreamConfig(name=name, kind=kind, objectives={}, batch_size=batch_size, augment="none",
                          max_text_len=max_text_len)
    spec = StreamSpec(stream=stream, urls=check_shards(name, list(urls)), image_size=image_size,
                      patch_size=patch_size, rank=rank, world_size=world_size, train=False, shuffle_buffer=0)
    probe_stream(spec, tokenizer)
    return EvalLoader(spec, tokenizer, num_workers)
