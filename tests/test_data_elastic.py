"""Elastic restore (momo_ds.data.elastic): resume from every rank's loader state on another world size / workers.

Samples are counted by key: an image by its label (the fixture shards carry ``cls`` = global sample index), a text
window by its token ids. Replayed images are also keyed by their pixels: the augmentation must be the one the
old slot would have drawn. The expected keys of a slot come from its own StreamDataset at batch size 1.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json

import pytest
import torch

from momo_ds.config import DataConfig, StreamConfig
from momo_ds.data import DataError, build_stage_loader
from momo_ds.data.fixtures import train_test_tokenizer, write_image_shards, write_pair_shards, write_text_shards
from momo_ds.data.stream import StreamDataset, StreamSpec
from tests.test_data_resume import assert_same

NAMES = ("img", "txt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("elastic")
    return {"tok": train_test_tokenizer(d / "tok.json"),
            "image": write_image_shards(d / "image", 36, 4, size=(20, 20)),  # 9 shards: unequal shares
            "text": write_text_shards(d / "text", 20, 5, max_words=24)}


def config(data, workers: int, img_batch: int = 3, resampled: bool = False) -> DataConfig:
    return DataConfig(streams=[
        StreamConfig(name="img", kind="image", shards=data["image"], batch_size=img_batch, resampled=resampled),
        StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0}, shards=data["text"], batch_size=5,
                     max_text_len=6)],  # documents of several windows: saves land mid-document
        image_size=16, num_workers=workers, shuffle_buffer=5, seed=3)


def loaders(data, world: int, workers: int, **kw) -> list:
    return [build_stage_loader(config(data, workers, **kw), tokenizer=data["tok"], patch_size=4, rank=r,
                               world_size=world) for r in range(world)]


def keys(name: str, batch, pixels: bool = False) -> list:
    if name == "img":
        labels = [int(v) for v in batch.labels]
        if not pixels:
            return labels
        return [(v, hashlib.sha1(x.numpy().tobytes()).hexdigest()) for v, x in zip(labels, batch.images)]
    return [tuple(ids[m].tolist()) for ids, m in zip(batch.full_ids, batch.full_mask)]


def consume(loader, n: int, seen: dict) -> None:
    for _ in range(n):
        for name, batch in loader.next().items():
            seen[name].update(keys(name, batch))
            if name == "img":
                seen["img_px"].update(keys(name, batch, pixels=True))


def counters() -> dict:
    return collections.defaultdict(collections.Counter)


def replaying(loader) -> bool:
    return any("replay" in s for s in loader.state_dict()["streams"].values())


def slot_stream(data, name: str, layout, start):
    """(batch of one model sample, position after it) of slot layout = (rank, world, worker, workers)."""
    rank, world, worker, workers = layout
    cfg = config(data, 0)
    sc = next(s for s in cfg.streams if s.name == name)
    spec = StreamSpec(stream=dataclasses.replace(sc, batch_size=1), urls=list(sc.shards), image_size=cfg.image_size,
                      patch_size=4, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, rank=rank, world_size=world)
    for batch, meta in StreamDataset(spec, data["tok"]).iter_slot(worker, workers, list(start[:3]) + [0]):
        yield batch, meta["pos"][:3]


def between(data, name, layout, start, stop, pixels=False) -> collections.Counter:
    """Keys of the samples a slot reads from position ``start`` up to position ``stop``."""
    out = collections.Counter()
    if list(start[:3]) == list(stop[:3]):
        return out
    for batch, pos in slot_stream(data, name, layout, start):
        out.update(keys(name, batch, pixels))
        assert pos <= list(stop[:3])
        if pos == list(stop[:3]):
            return out


def through(data, name, layout, start, last_epoch, pixels=False) -> collections.Counter:
    """Keys of the samples a slot reads from ``start`` to the end of epoch ``last_epoch``."""
    out = collections.Counter()
    for batch, pos in slot_stream(data, name, layout, start):
        if pos[0] > last_epoch:
            return out
        out.update(keys(name, batch, pixels))


def layouts(state: dict):
    """(layout, saved position) of every slot of one rank's stream state."""
    w = state["num_slots"]
    return [((state["rank"], state["world_size"], i, w), p) for i, p in enumerate(state["slots"])]


def saved(loader_list) -> list[dict]:
    return [json.loads(json.dumps(L.state_dict())) for L in loader_list]  # as read back from rank_XXXXX.json


def close(loader_list) -> None:
    for L in loader_list:
        L.close()


@pytest.mark.parametrize("old,new", [((2, 0, 6), (1, 0)), ((1, 0, 10), (2, 0)), ((2, 0, 5), (3, 2))],
                         ids=["2to1", "1to2", "2to3x2workers"])
def test_elastic_resume_trains_the_rest_of_every_epoch_exactly_once(data, old, new):
    (world, workers, k), (new_world, new_workers) = old, new
    before, after = counters(), counters()
    olds = loaders(data, world, workers)
    for L in olds:
        consume(L, k, before)
    states = saved(olds)
    close(olds)
    per_stream = {n: [st["streams"][n] for st in states] for n in NAMES}
    last = {n: max(p[0] for s in per_stream[n] for p in s["slots"]) for n in NAMES}
    if old == (2, 0, 6):
        assert len({p[0] for s in per_stream["img"] for p in s["slots"]}) == 2, "old slots at different epochs"
    assert any(p[2] > 0 for s in per_stream["txt"] for p in s["slots"]), "a save lands inside a document"

    news = loaders(data, new_world, new_workers)
    for L in reversed(news):  # every new rank reads every old rank's state
        L.load_elastic_state(list(reversed(states)))
        n = 0
        while replaying(L):
            consume(L, 1, after)
            n += 1
            assert n < 100
    new_states = saved(news)
    close(news)

    for name in NAMES:
        old_slots = [x for s in per_stream[name] for x in layouts(s)]
        # The accounting model reproduces what the old run consumed...
        assert before[name] == sum((between(data, name, lay, [0, 0, 0], p) for lay, p in old_slots),
                                   collections.Counter())
        new_slots = [x for st in new_states for x in layouts(st["streams"][name])]
        assert all(p[0] >= last[name] + 1 for _, p in new_slots)
        fresh = sum((between(data, name, lay, [last[name] + 1, 0, 0], p) for lay, p in new_slots),
                    collections.Counter())
        replay = sum((through(data, name, lay, p, last[name]) for lay, p in old_slots), collections.Counter())
        # ...and the new run trains exactly the rest of every old slot through epoch E, then the new layout.
        assert after[name] == replay + fresh
        full = through(data, name, (0, 1, 0, 1), [0, 0, 0], 0)  # one epoch: every sample once
        total = before[name] + after[name]
        assert total == sum([full] * (last[name] + 1), collections.Counter()) + fresh
    replay_px = sum((through(data, "img", lay, p, last["img"], pixels=True)
                     for s in per_stream["img"] for lay, p in layouts(s)), collections.Counter())
    fresh_px = sum((between(data, "img", lay, [last["img"] + 1, 0, 0], p, pixels=True)
                    for st in new_states for lay, p in layouts(st["streams"]["img"])), collections.Counter())
    assert after["img_px"] == replay_px + fresh_px, "replayed samples carry the old slot's augmentation"


def test_resume_inside_the_replay_is_exact_and_a_second_elastic_restore_composes(data):
    before = counters()
    olds = loaders(data, 2, 0)
    for L in olds:
        consume(L, 5, before)
    states = saved(olds)
    close(olds)
    # 2 ranks -> 3 ranks x 2 workers: stop inside the replay of the new rank 0.
    mid = counters()
    news = loaders(data, 3, 2)
    for L in news:
        L.load_elastic_state(states)
    consume(news[0], 2, mid)
    for L in news[1:]:
        consume(L, 1, mid)
    assert replaying(news[0])
    mid_states = saved(news)
    expected = [[L.next() for _ in range(4)] for L in news]
    close(news)
    again = loaders(data, 3, 2)
    for L, st in zip(again, mid_states):
        L.load_state_dict(st)  # same layout: exact, replay position included
        assert L.state_dict() == st
    for L, exp in zip(again, expected):
        for x in exp:
            y = L.next()
            for name in x:
                assert_same(x[name], y[name], name)
    close(again)
    with build_stage_loader(config(data, 2), tokenizer=data["tok"], patch_size=4, rank=1, world_size=3) as b:
        b.load_elastic_state(mid_states)  # same layout through the elastic entry point: also exact
        for x in expected[1]:
            y = b.next()
            for name in x:
                assert_same(x[name], y[name], name)

    # 3 x 2 (saved mid-replay) -> 1 rank: still every epoch exactly once, up to the highest epoch E' of 3 x 2.
    last = {n: max(p[0] for st in mid_states for p in st["streams"][n]["slots"]) for n in NAMES}
    after = counters()
    with build_stage_loader(config(data, 0), tokenizer=data["tok"], patch_size=4) as one:
        one.load_elastic_state(mid_states)
        n = 0
        while replaying(one):
            consume(one, 1, after)
            n += 1
            assert n < 200
        final = one.state_dict()
    for name in NAMES:
        full = through(data, name, (0, 1, 0, 1), [0, 0, 0], 0)
        pos = final["streams"][name]["slots"][0]
        fresh = between(data, name, (0, 1, 0, 1), [last[name] + 1, 0, 0], pos)
        total = before[name] + mid[name] + after[name]
        assert total == sum([full] * (last[name] + 1), collections.Counter()) + fresh, name


def test_batch_size_change_and_resampled_streams(data):
    olds = loaders(data, 2, 0, resampled=True)
    for L in olds:
        L.next()
        L.next()
    states = saved(olds)
    close(olds)
    last = max(p[0] for st in states for p in st["streams"]["img"]["slots"])
    nbatch = max(p[3] for st in states for p in st["streams"]["img"]["slots"])
    with build_stage_loader(config(data, 0, img_batch=6, resampled=True), tokenizer=data["tok"],
                            patch_size=4) as one:
        one.load_elastic_state(states)
        img = one.state_dict()["streams"]["img"]
        assert "replay" not in img and img["slots"] == [[last + 1, 0, 0, nbatch]], "resampled: nothing replayed"
        assert one.state_dict()["streams"]["txt"].get("replay"), "epoch streams replay"
        assert one.next()["img"].batch_size == 6
        # the sum over ranks of skip counts and batches carries over
        assert one.state_dict()["streams"]["img"]["batches"] == 4 + 1


def test_same_layout_is_bitwise_the_exact_restore(data):
    olds = loaders(data, 2, 2)
    for L in olds:
        for _ in range(4):
            L.next()
    states = saved(olds)
    expected = [[L.next() for _ in range(3)] for L in olds]
    close(olds)
    for r in (1, 0):
        with build_stage_loader(config(data, 2), tokenizer=data["tok"], patch_size=4, rank=r,
                                world_size=2) as loader:
            loader.load_elastic_state(states[::-1])
            assert loader.state_dict() == states[r]
            for x in expected[r]:
                y = loader.next()
                for name in x:
                    assert_same(x[name], y[name], name)
    old = dict(states[0], version=1)  # a state written before STATE_VERSION 2 still loads at the same layout
    with build_stage_loader(config(data, 2), tokenizer=data["tok"], patch_size=4, rank=0, world_size=2) as loader:
        loader.load_state_dict(old)
        for x in expected[0][:1]:
            y = loader.next()
            for name in x:
                assert_same(x[name], y[name], name)


def test_elastic_state_errors(data):
    olds = loaders(data, 2, 0)
    states = saved(olds)
    close(olds)
    with build_stage_loader(config(data, 0), tokenizer=data["tok"], patch_size=4) as one:
        with pytest.raises(DataError, match="every rank"):
            one.load_elastic_state(states[:1])
        with pytest.raises(DataError, match="seed"):
            bad = json.loads(json.dumps(states))
            for st in bad:
                st["streams"]["img"]["seed"] = 99
            one.load_elastic_state(bad)
        with pytest.raises(DataError, match="version"):
            one.load_elastic_state([dict(st, version=0) for st in states])


# Sample order, text windows and masks of the unchanged path, as the loader gave them before elastic restore
# existed (image pixels left out: they depend on the JPEG and augmentation libraries' versions).
GOLDEN = {(0, 2, 1): "dd621c8275444dd9", (2, 1, 0): "6b9aa6599900450e"}


def _digest(batches) -> str:
    h = hashlib.sha256()

    def walk(x):
        if dataclasses.is_dataclass(x):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, torch.Tensor) and not x.is_floating_point():
            h.update(str(tuple(x.shape)).encode())
            h.update(x.to(torch.int64).numpy().tobytes())

    for b in batches:
        for name in sorted(b):
            h.update(name.encode())
            walk(b[name])
    return h.hexdigest()[:16]


@pytest.mark.parametrize("workers,world,rank", sorted(GOLDEN))
def test_unchanged_layout_batches_are_those_of_before(tmp_path, workers, world, rank):
    tok = train_test_tokenizer(tmp_path / "tok.json")
    image = write_image_shards(tmp_path / "image", 30, 6, size=(24, 20))
    text = write_text_shards(tmp_path / "text", 20, 5, max_words=30)
    pair = write_pair_shards(tmp_path / "pair", 18, 6, size=(20, 24))
    cfg = DataConfig(streams=[
        StreamConfig(name="img", kind="image", shards=image, batch_size=4, repeat=2.0),
        StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0}, shards=text, batch_size=5, max_text_len=7),
        StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0}, shards=pair, batch_size=3,
                     image_mask_ratio=0.75, text_mask_ratio=0.75, augment="randaug")],
        image_size=16, num_workers=workers, shuffle_buffer=7, seed=0)
    with build_stage_loader(cfg, tokenizer=tok, patch_size=4, rank=rank, world_size=world) as loader:
        batches = [loader.next() for _ in range(14)]
    assert _digest(batches) == GOLDEN[(workers, world, rank)]
