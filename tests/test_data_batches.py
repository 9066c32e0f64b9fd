"""Each stream kind yields batches exactly as momo_ds/batch.py documents them."""
from __future__ import annotations

import torch
import pytest

from momo_ds.batch import ImageBatch, PairBatch, TextBatch
from momo_ds.config import DataConfig, StreamConfig
from momo_ds.data import build_eval_loader, build_stage_loader
from momo_ds.data.fixtures import train_test_tokenizer, write_image_shards, write_pair_shards, write_text_shards
from momo_ds.data.masking import num_masked_patches, num_masked_tokens

IMG, PATCH = 32, 8  # 16 patches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    return {"tok": train_test_tokenizer(d / "tok.json"),
            "image": write_image_shards(d / "image", 24, 8),
            "text": write_text_shards(d / "text", 24, 8, max_words=60),
            "pair": write_pair_shards(d / "pair", 24, 8)}


def check_text(t: TextBatch, tok, ratio: float) -> None:
    b = t.input_ids.shape[0]
    for x in (t.input_ids, t.positions, t.masked_positions, t.masked_ids, t.full_ids):
        assert x.dtype == torch.long and x.shape[0] == b
    for x in (t.attention_mask, t.masked_valid, t.full_mask):
        assert x.dtype == torch.bool
    assert t.input_ids.shape == t.positions.shape == t.attention_mask.shape
    assert t.masked_ids.shape == t.masked_positions.shape == t.masked_valid.shape
    assert t.full_ids.shape == t.full_mask.shape
    assert int(t.full_ids.max()) < tok.vocab_size and int(t.full_ids.min()) >= 0
    lengths = t.full_mask.sum(1)
    assert t.full_mask.any(1).all() and t.attention_mask.any(1).all(), "every row has a visible token"
    assert int(lengths.max()) == t.full_ids.shape[1], "padding only to the longest text"
    assert int(t.attention_mask.sum(1).max()) == t.input_ids.shape[1]
    assert (t.full_ids[~t.full_mask] == tok.pad_id).all() and (t.input_ids[~t.attention_mask] == tok.pad_id).all()
    assert (t.positions[~t.attention_mask] == 0).all() and (t.masked_positions[~t.masked_valid] == 0).all()
    assert torch.equal(t.masked_valid.sum(1), num_masked_tokens(lengths, ratio)), "exact mask count per text"
    for i in range(b):
        n = int(lengths[i])
        vis = t.positions[i][t.attention_mask[i]].tolist()
        msk = t.masked_positions[i][t.masked_valid[i]].tolist()
        assert vis == sorted(vis) and msk == sorted(msk)
        assert sorted(vis + msk) == list(range(n)), "masked + visible = full text"
        full = t.full_ids[i, :n].tolist()
        assert t.input_ids[i][t.attention_mask[i]].tolist() == [full[p] for p in vis]
        assert t.masked_ids[i][t.masked_valid[i]].tolist() == [full[p] for p in msk]
        if ratio > 0 and n >= 2:
            assert 1 <= len(msk) <= n - 1


def check_image(x: ImageBatch, ratio: float, labels: bool) -> None:
    b = x.images.shape[0]
    n = (IMG // PATCH) ** 2
    assert x.images.shape == (b, 3, IMG, IMG) and x.images.dtype == torch.float32
    assert x.patch_keep.dtype == x.patch_masked.dtype == torch.long
    nm = num_masked_patches(n, ratio)
    assert x.patch_keep.shape == (b, n - nm) and x.patch_masked.shape == (b, nm)
    both = torch.cat([x.patch_keep, x.patch_masked], 1).sort(1).values
    assert torch.equal(both, torch.arange(n).expand(b, -1)), "keep ∪ masked = all patches"
    assert torch.equal(x.patch_keep, x.patch_keep.sort(1).values)
    assert torch.equal(x.patch_masked, x.patch_masked.sort(1).values)
    assert -2.2 < float(x.images.min()) and float(x.images.max()) < 2.7  # ImageNet-normalised range
    if labels:
        assert x.labels is not None and x.labels.shape == (b,) and x.labels.dtype == torch.long
    else:
        assert x.labels is None


@pytest.mark.parametrize("workers", [0, 2])
def test_stage_loader_all_kinds(data, workers):
    cfg = DataConfig(streams=[
        StreamConfig(name="img", kind="image", shards=data["image"], batch_size=5, image_mask_ratio=0.75),
        StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0}, shards=data["text"], batch_size=6,
                     text_mask_ratio=0.15, max_text_len=16),
        StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0, "itc": 1.0}, shards=data["pair"],
                     batch_size=4, image_mask_ratio=0.75, text_mask_ratio=0.75, augment="randaug")],
        image_size=IMG, num_workers=workers, shuffle_buffer=10, seed=3)
    with build_stage_loader(cfg, tokenizer=data["tok"], patch_size=PATCH) as loader:
        for _ in range(6):  # crosses epoch boundaries (24 samples per stream)
            out = loader.next()
            assert list(out) == ["img", "txt", "pair"]
            assert isinstance(out["img"], ImageBatch) and isinstance(out["txt"], TextBatch)
            assert isinstance(out["pair"], PairBatch)
            check_image(out["img"], 0.75, labels=True)
            check_text(out["txt"], data["tok"], 0.15)
            assert out["txt"].full_ids.shape[1] <= 16
            check_image(out["pair"].image, 0.75, labels=False)
            check_text(out["pair"].text, data["tok"], 0.75)
            assert out["pair"].batch_size == 4
        assert loader.samples_seen() == {"img": 30, "txt": 36, "pair": 24}
        assert loader.skip_counts() == {"img": {}, "txt": {}, "pair": {}}
        assert loader.epochs()["pair"] >= 0


def test_long_documents_become_windows(data):
    cfg = DataConfig(streams=[StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0}, shards=data["text"],
                                           batch_size=64, max_text_len=8, text_mask_ratio=0.0)],
                     image_size=IMG, num_workers=0, shuffle_buffer=0)
    tok = data["tok"]
    with build_stage_loader(cfg, tokenizer=tok, patch_size=PATCH) as loader:
        t = loader.next()["txt"]
    assert t.full_ids.shape[1] == 8 and t.masked_ids.shape[1] == 0
    assert torch.equal(t.input_ids, t.full_ids)
    # Windows of one document follow each other; their concatenation is the document's tokens.
    import webdataset as wds
    first = next(iter(wds.DataPipeline(wds.SimpleShardList(data["text"][:1]), wds.tarfile_to_samples())))
    doc = tok.encode([first["txt"].decode()])[0]
    rows = [t.full_ids[i][t.full_mask[i]].tolist() for i in range(len(t.full_ids))]
    starts = [i for i, r in enumerate(rows) if r == doc[:8]]
    assert starts, "the first document's first window is in the batch"
    got = sum(rows[starts[0]: starts[0] + (len(doc) + 7) // 8], [])
    assert got == doc


@pytest.mark.parametrize("kind", ["image", "text", "pair"])
def test_eval_loader_one_pass_unmasked(data, kind):
    loader = build_eval_loader(data[kind], kind, tokenizer=data["tok"], image_size=IMG, patch_size=PATCH,
                               batch_size=10, max_text_len=16)
    for _ in range(2):  # re-iterable: each iteration is one full ordered pass
        batches = list(loader)
        assert [b.batch_size for b in batches] == [10, 10, 4]
    for b in batches:
        img = b if kind == "image" else getattr(b, "image", None)
        txt = b if kind == "text" else getattr(b, "text", None)
        if img is not None:
            check_image(img, 0.0, labels=kind == "image")
        if txt is not None:
            check_text(txt, data["tok"], 0.0)
            assert torch.equal(txt.input_ids, txt.full_ids) and txt.masked_ids.shape[1] == 0
    if kind == "image":
        labels = torch.cat([b.labels for b in batches]).tolist()
        assert labels == list(range(24)), "ordered, complete, labels kept"
    assert loader.skip_counts() == {}


def test_eval_loader_split_across_ranks(data):
    seen = []
    for rank in range(2):
        loader = build_eval_loader(data["image"], "image", tokenizer=data["tok"], image_size=IMG, patch_size=PATCH,
                                   batch_size=7, rank=rank, world_size=2, num_workers=2)
        seen.append([int(v) for b in loader for v in b.labels])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(24))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_benchmark_batches_are_shaped_and_masked_as_loader_batches(data, stage):
    """benchmarks/common.synthetic_batch builds a stream's batch without a dataset; it must mask as the loader
    does (the same patch counts, align patches and per-text token counts), or benchmarks time other batches."""
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import synthetic_batch

    from momo_ds.config import load_recipe, packaged_recipe
    from momo_ds.model import resolve_config

    recipe = load_recipe(packaged_recipe("tiny", stage))
    streams = list(recipe.data.streams)
    if stage == 3:
        streams.append(dataclasses.replace(next(s for s in streams if s.kind == "pair"), name="pair50",
                                           align_mask_ratio=0.5))
    cfg = resolve_config("tiny", img_size=IMG, patch_size=PATCH, vocab_size=data["tok"].vocab_size)
    for s in streams:
        s = dataclasses.replace(s, shards=list(data[s.kind]), batch_size=6, max_text_len=16)
        with build_stage_loader(DataConfig(streams=[s], image_size=IMG, num_workers=0, shuffle_buffer=4),
                                tokenizer=data["tok"], patch_size=PATCH) as loader:
            got = loader.next()[s.name]
        ours = synthetic_batch(cfg, s, torch.Generator().manual_seed(0))
        assert type(got) is type(ours), s.name
        images = [(got, ours)] if s.kind == "image" else [(got.image, ours.image)] if s.kind == "pair" else []
        texts = [(got, ours)] if s.kind == "text" else [(got.text, ours.text)] if s.kind == "pair" else []
        for a, b in images:
            assert a.patch_keep.shape == b.patch_keep.shape and a.patch_masked.shape == b.patch_masked.shape
        for a, b in texts:
            for t in (a, b):
                assert torch.equal(t.masked_valid.sum(1), num_masked_tokens(t.full_mask.sum(1), s.text_mask_ratio))
        if s.kind == "pair":
            assert (got.align_keep is None) == (ours.align_keep is None) == (s.align_mask_ratio is None)
            if got.align_keep is not None:
                assert got.align_keep.shape == ours.align_keep.shape
