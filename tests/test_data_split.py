"""Splitting across ranks and loader workers: disjoint samples that cover every epoch; repeat factors."""
from __future__ import annotations

import pytest

from momo_ds.config import DataConfig, StreamConfig
from momo_ds.data import build_stage_loader
from momo_ds.data.fixtures import train_test_tokenizer, write_image_shards
from momo_ds.data.shards import epoch_shards, split_for_slot
from momo_ds.data.stream import StreamDataset, StreamSpec


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_test_tokenizer(tmp_path_factory.mktemp("tok") / "tok.json")


def labels_of(batch) -> list[int]:
    return [int(v) for v in batch.labels]


def test_two_ranks_two_workers_cover_epoch_disjointly(tmp_path, tok):
    shards = write_image_shards(tmp_path, 48, 6, size=(16, 16))  # 8 shards → 2 per slot, 12 samples, 3 batches
    per_rank = []
    for rank in range(2):
        cfg = DataConfig(streams=[StreamConfig(name="img", kind="image", shards=shards, batch_size=4)],
                         image_size=16, num_workers=2, shuffle_buffer=5, seed=7)
        with build_stage_loader(cfg, tokenizer=tok, patch_size=8, rank=rank, world_size=2) as loader:
            batches = [loader.next()["img"] for _ in range(12)]  # two epochs of this rank (6 batches each)
            # Each slot sits at the end of epoch 1 (an epoch's end is only known when its next read finds nothing).
            assert [p[:2] for p in loader.state_dict()["streams"]["img"]["slots"]] == [[1, 12], [1, 12]]
        epoch0 = sum((labels_of(b) for b in batches[:6]), [])
        epoch1 = sum((labels_of(b) for b in batches[6:]), [])
        assert len(set(epoch0)) == 24 and len(set(epoch1)) == 24
        per_rank.append((epoch0, epoch1))
        assert epoch0 != epoch1, "every epoch reshuffles"
    for e in range(2):
        a, b = set(per_rank[0][e]), set(per_rank[1][e])
        assert not a & b, "ranks see disjoint samples"
        assert a | b == set(range(48)), "ranks together cover the epoch"


def _slot_labels(spec: StreamSpec, tok, worker: int, workers: int, nbatches: int) -> list[int]:
    it = StreamDataset(spec, tok).iter_slot(worker, workers)
    return sum((labels_of(next(it)[0]) for _ in range(nbatches)), [])


def test_fewer_shards_than_slots_split_by_sample(tmp_path, tok):
    shards = write_image_shards(tmp_path, 24, 8, size=(16, 16))  # 3 shards for 2 ranks x 2 workers
    got = []
    # rank 0 reads shards 0 and 2 (one per worker, 8 samples each); rank 1 reads shard 1, split by sample (4 each)
    for rank, per_slot in ((0, 8), (1, 4)):
        spec = StreamSpec(stream=StreamConfig(name="img", kind="image", batch_size=4), urls=shards, image_size=16,
                          patch_size=8, rank=rank, world_size=2, shuffle_buffer=3)
        for w in range(2):
            got.append(_slot_labels(spec, tok, w, 2, per_slot // 4))
    flat = sum(got, [])
    assert len(flat) == 24 and set(flat) == set(range(24))


def test_split_for_slot_levels():
    shards = [f"s{i}" for i in range(5)]
    assert split_for_slot(shards, 1, 2, 0, 2) == (["s1"], [])
    assert split_for_slot(shards, 0, 2, 1, 2) == (["s2"], [])
    assert split_for_slot(shards[:1], 1, 2, 1, 3) == (["s0"], [(1, 2), (1, 3)])
    assert split_for_slot(shards, 0, 1, 0, 1) == (shards, [])


def test_repeat_factor_epoch_windows():
    urls = [f"u{i}" for i in range(4)]
    e0 = epoch_shards(urls, 0, repeat=5, seed=0, key="k")
    assert len(e0) == 20 and all(e0.count(u) == 5 for u in urls), "repeat 5: five passes per epoch"
    assert e0[:4] != e0[4:8] or e0[4:8] != e0[8:12], "each pass reshuffled"
    quarters = [epoch_shards(urls * 2, e, repeat=0.25, seed=0, key="k") for e in range(4)]
    assert all(len(q) == 2 for q in quarters)
    assert sorted(sum(quarters, [])) == sorted(urls * 2), "four quarter-epochs cover the data once"
    assert epoch_shards(urls, 3, repeat=1, seed=1, key="k") == epoch_shards(urls, 3, repeat=1, seed=1, key="k")
    assert epoch_shards(urls, 0, repeat=1, seed=0, key="k", shuffle=False) == urls


def test_resampled_mode_is_deterministic_and_infinite(tmp_path, tok):
    shards = write_image_shards(tmp_path, 8, 4, size=(16, 16))
    spec = StreamSpec(stream=StreamConfig(name="img", kind="image", batch_size=4, resampled=True), urls=shards,
                      image_size=16, patch_size=8, shuffle_buffer=2, seed=5)
    a = _slot_labels(spec, tok, 0, 1, 10)
    b = _slot_labels(spec, tok, 0, 1, 10)
    assert a == b and len(a) == 40 and set(a) <= set(range(8))
