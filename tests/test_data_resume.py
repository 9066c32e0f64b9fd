"""Determinism and exact resume: the same seed gives the same batches; save → restore gives the next batches."""
from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from momo_ds.config import DataConfig, StreamConfig
from momo_ds.data import DataError, build_stage_loader
from momo_ds.data.fixtures import train_test_tokenizer, write_image_shards, write_pair_shards, write_text_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    return {"tok": train_test_tokenizer(d / "tok.json"),
            "image": write_image_shards(d / "image", 30, 6, size=(24, 20)),
            "text": write_text_shards(d / "text", 20, 5, max_words=30),
            "pair": write_pair_shards(d / "pair", 18, 6, size=(20, 24))}


def config(data, workers: int, seed: int = 0) -> DataConfig:
    return DataConfig(streams=[
        StreamConfig(name="img", kind="image", shards=data["image"], batch_size=4, repeat=2.0),
        StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0}, shards=data["text"], batch_size=5,
                     max_text_len=7),  # long documents → several windows; saves land mid-document
        StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0}, shards=data["pair"], batch_size=3,
                     image_mask_ratio=0.75, text_mask_ratio=0.75, augment="randaug")],
        image_size=16, num_workers=workers, shuffle_buffer=7, seed=seed)


def assert_same(a, b, where=""):
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def take(loader, n: int) -> list[dict]:
    return [loader.next() for _ in range(n)]


def test_same_seed_same_batches(data):
    with build_stage_loader(config(data, 2), tokenizer=data["tok"], patch_size=4) as a, \
            build_stage_loader(config(data, 2), tokenizer=data["tok"], patch_size=4) as b:
        for x, y in zip(take(a, 6), take(b, 6)):
            for name in x:
                assert_same(x[name], y[name], name)
    with build_stage_loader(config(data, 2, seed=1), tokenizer=data["tok"], patch_size=4) as c, \
            build_stage_loader(config(data, 2), tokenizer=data["tok"], patch_size=4) as d:
        x, y = c.next(), d.next()
        assert not torch.equal(x["img"].images, y["img"].images)


@pytest.mark.parametrize("workers,before", [(0, 7), (2, 9)])
def test_restore_gives_exactly_the_next_batches(data, workers, before):
    tok = data["tok"]
    with build_stage_loader(config(data, workers), tokenizer=tok, patch_size=4) as ref:
        take(ref, before)  # crosses epoch ends: img 15 batches/2 passes... txt and pair epochs are short
        state = json.loads(json.dumps(ref.state_dict()))  # JSON round trip
        skips, seen = ref.skip_counts(), ref.samples_seen()
        expected = take(ref, 5)
    assert any(p[2] > 0 for p in state["streams"]["txt"]["slots"]), "a save lands inside a document"
    with build_stage_loader(config(data, workers), tokenizer=tok, patch_size=4) as restored:
        restored.next()  # restoring a loader that already started works too
        restored.load_state_dict(state)
        assert restored.samples_seen() == seen and restored.skip_counts() == skips
        got = take(restored, 5)
        # Save again from the restored loader and restore once more.
        state2 = restored.state_dict()
        after = take(restored, 2)
    for x, y in zip(expected, got):
        for name in x:
            assert_same(x[name], y[name], name)
    with build_stage_loader(config(data, workers), tokenizer=tok, patch_size=4) as again:
        again.load_state_dict(state2)
        for x, y in zip(after, take(again, 2)):
            for name in x:
                assert_same(x[name], y[name], name)


def test_state_layout_mismatch_is_an_error(data):
    tok = data["tok"]
    with build_stage_loader(config(data, 0), tokenizer=tok, patch_size=4) as a:
        take(a, 2)
        state = a.state_dict()
    with build_stage_loader(config(data, 2), tokenizer=tok, patch_size=4) as b:
        with pytest.raises(DataError, match="num_slots"):
            b.load_state_dict(state)
        b.load_state_dict(state, strict=False)  # restarts every slot at the saved epoch
        assert b.next()["img"].batch_size == 4


def test_in_process_loader_leaves_global_rng_alone(data):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    with build_stage_loader(config(data, 0), tokenizer=data["tok"], patch_size=4) as loader:
        take(loader, 2)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]
