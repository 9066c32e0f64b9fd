"""Elastic restore: resume a stage loader from the states of *every* rank of a run with another layout.

    states = [json.loads(p.read_text())["loader"] for p in sorted(tag_dir.glob("rank_*.json"))]
    loader.load_elastic_state(states)   # any world size / num_workers / per-stream batch size

Terms. A *slot* is one (rank, worker) of a layout, numbered ``rank * W + worker`` with ``W = max(1, num_workers)``;
``slot j's share of epoch e`` is what ``split_for_slot`` gives slot j of epoch e's shard window, in the order of
its shuffle seed. The old run has ``n`` slots, the new one ``N = new world size * W_new``. Per stream, ``E`` is
the highest epoch of the saved positions of all old slots and ``B`` the highest saved batch count of a slot.

Plan (per stream, a pure function of the saved states and the new layout). New slot ``g`` takes the old slots
``j`` with ``j % N == g``, in increasing order, and plays for each of them:

1. the replay segments that old slot had not finished itself (it was restored elastically and saved before it
   was through them), as they were saved;
2. old slot ``j``'s own stream, from its saved position to the end of epoch ``E``: its shard split, shuffle and
   per-sample seeds (augmentation, caption choice), so every replayed sample is the bitwise sample the old slot
   would have produced.

Then it continues with its own stream in the new layout from the start of epoch ``E + 1``. Model samples of a
partial batch carry over from one segment to the next, as from one epoch to the next. Masks are drawn from the
new slot's own (slot, batch count); batch counts start at ``B``, so no mask seed of the old run is drawn again.

Guarantee, for a stream with ``resampled: false`` (and the state of one save of every old rank):

* every sample of an old slot's share of an epoch ``<= E`` that the old run had not consumed (as consumed by the
  trainer: prefetched or half-filled batches were not) is trained exactly once by the new ranks, with the
  augmentation the old slot would have drawn; none the old run consumed is trained again in that epoch. Old
  and new run together train each epoch ``<= E`` exactly once, split as the old layout split it;
* old slots at different epochs: a slot behind ``E`` plays the rest of its epoch *and all of its share of the
  epochs up to E* (nothing is skipped, nothing is played twice). Slots consume batches in lockstep, so with
  shares of equal size (in model samples) they are within a batch of each other and this is at most one epoch
  share, near an epoch end; with unequal shares (shard or sample counts not divisible by the number of slots,
  or text documents of different window counts) slots drift apart over epochs, and a slot several epochs
  behind has all of them played (by its one new slot) before that new slot starts epoch E + 1. ``E`` is per
  stream;
* from epoch ``E + 1`` on, every new slot reads exactly what a run of the new layout reads in that epoch
  (same split, shuffle and sample seeds); only masks and batch boundaries differ;
* the new loader's ``state_dict()`` records, per slot, the segments still to replay (the current one at its
  consumed position, ``"replay"`` in the stream state) and the new-layout position it continues at: a
  same-layout resume from it is exact (bitwise, like any resume), and a further elastic restore keeps every
  guarantee above (unfinished segments are carried over as they are, with their own end epoch);
* the same layout (world size, workers and the stream's batch size all unchanged) is ``load_state_dict`` of this
  rank's state: bitwise the batches the old run would have given.

Not covered. ``resampled: true`` streams have no epoch coverage in any run: every new slot starts epoch
``E + 1`` of the new layout (fresh draws) and nothing is replayed. Eval loaders keep no state (each pass is one
whole ordered pass in the current layout). Skip counts: new rank 0 carries the sum of all old ranks' counts
(the trainer logs the sum over ranks, which continues); the old ranks' batch counts (``samples_seen``) are
summed and spread evenly over the new ranks.
"""
from __future__ import annotations

from typing import Sequence

from .errors import DataError, SkipStats

# Stream-state fields that define the sample streams: they must match for a replay to be the old run's data.
FIXED = ("kind", "seed", "num_shards", "repeat")
LAYOUT = ("world_size", "num_slots", "batch_size")


def segment(rank: int, world_size: int, worker: int, workers: int, pos: Sequence[int], until: int) -> dict:
    """One replay segment: slot ``(rank, worker)`` of a ``world_size x workers`` layout, from ``pos = [epoch, raw,
    window]`` to the end of epoch ``until``."""
    return {"slot": [int(rank), int(world_size), int(worker), int(workers)], "pos": [int(p) for p in pos[:3]],
            "until": int(until)}


def copy_segments(segments: Sequence[dict]) -> list[dict]:
    return [segment(*seg["slot"], seg["pos"], seg["until"]) for seg in segments]


def ordered_stream_states(name: str, olds: Sequence[dict]) -> list[dict]:
    """One stream's states of every old rank, ordered by rank; DataError unless they are one complete set."""
    if not olds:
        raise DataError(f"stream {name!r}: no saved loader state given")
    world = olds[0].get("world_size")
    by_rank = sorted(olds, key=lambda d: d.get("rank", -1))
    ranks = [d.get("rank") for d in by_rank]
    if ranks != list(range(len(olds))) or any(d.get("world_size") != world for d in olds) or world != len(olds):
        worlds = sorted({d.get("world_size") for d in olds}, key=str)
        raise DataError(f"stream {name!r}: elastic restore needs the saved state of every rank of one run; got "
                        f"ranks {sorted(ranks, key=str)} of world size(s) {worlds}")
    for field in FIXED + ("num_slots",):
        values = {repr(d.get(field)) for d in olds}
        if len(values) > 1:
            raise DataError(f"stream {name!r}: saved rank states disagree on {field}: {sorted(values)}")
    for d in by_rank:
        if len(d["slots"]) != d["num_slots"]:
            raise DataError(f"stream {name!r}: rank {d['rank']} saved {len(d['slots'])} slots, num_slots "
                            f"{d['num_slots']}")
    return by_rank


def same_layout(olds: Sequence[dict], header: dict) -> bool:
    """The saved layout of a stream is the current one (exact restore, no remapping)."""
    return all(olds[0].get(k) == header[k] for k in LAYOUT)


def remap_stream(name: str, olds: Sequence[dict], header: dict, resampled: bool) -> dict:
    """The stream state of the new rank ``header["rank"]`` (layout in ``header``: the new loader's state header
    with rank, world_size, num_slots, ...) that plays the plan of the module docstring; load it with the
    ordinary exact ``load_state_dict``."""
    olds = ordered_stream_states(name, olds)
    diff = {k: (olds[0].get(k), header[k]) for k in FIXED if olds[0].get(k) != header[k]}
    if diff:
        changes = ", ".join(f"{k}: saved {a}, now {b}" for k, (a, b) in diff.items())
        raise DataError(f"stream {name!r}: saved loader state is of other data ({changes}); an elastic restore "
                        f"only changes world size, workers or batch size")
    old_world, old_w = int(olds[0]["world_size"]), int(olds[0]["num_slots"])
    plain = [list(p) for d in olds for p in d["slots"]]  # old slot j = rank * old_w + worker
    pending = [copy_segments((d.get("replay") or [[]] * old_w)[i]) for d in olds for i in range(old_w)]
    last_epoch = max(p[0] for p in plain)
    nbatch = max(p[3] for p in plain)
    rank, world, new_w = int(header["rank"]), int(header["world_size"]), int(header["num_slots"])
    n_new = world * new_w
    slots, replay = [], []
    for worker in range(new_w):
        g = rank * new_w + worker
        segs: list[dict] = []
        if not resampled:
            for j in range(g, len(plain), n_new):
                segs += [seg for seg in pending[j] if seg["pos"][0] <= seg["until"]]
                segs.append(segment(j // old_w, old_world, j % old_w, old_w, plain[j], last_epoch))
        slots.append([last_epoch + 1, 0, 0, nbatch])
        replay.append(segs)
    total = sum(int(d.get("batches", 0)) for d in olds)
    batches = total // world + (rank < total % world)
    skips = SkipStats()
    if rank == 0:
        for d in olds:
            skips.update(d.get("skips", {}))
    out = dict(header, epoch=min([s[0] for s in slots] + [seg["pos"][0] for r in replay for seg in r]),
               batches=batches, samples=batches * header["batch_size"], slots=slots, skips=skips.as_dict())
    if any(replay):
        out["replay"] = replay
    return out
