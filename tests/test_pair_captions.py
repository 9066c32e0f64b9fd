"""Pair samples with several captions (one per line of txt, as tools/make_shards.py writes them): training draws
one per sample from the sample's seed, evaluation uses them all; single-caption samples draw nothing."""
from __future__ import annotations

import types

import pytest
import torch
from PIL import Image

from momo_ds.data import SampleError, SkipStats, build_eval_loader, stream
from momo_ds.data.fixtures import encode_image, train_test_tokenizer, write_samples
from momo_ds.config import StreamConfig
from momo_ds.data.stream import SampleProcessor, StreamSpec

CAPTIONS = ["red circle", "blue square above the triangle", "a green shape"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_test_tokenizer(tmp_path_factory.mktemp("tok") / "tok.json")


def raw(txt: str, key: str = "k") -> dict:
    return {"__key__": key, "jpg": encode_image(Image.new("RGB", (20, 18), (200, 30, 30))), "txt": txt.encode()}


def processor(tok, train: bool) -> SampleProcessor:
    stream = StreamConfig(name="pair", kind="pair", objectives={"itc": 1.0}, batch_size=4)
    spec = StreamSpec(stream=stream, urls=[], image_size=16, patch_size=8, train=train)
    return SampleProcessor(spec, tok)


def test_training_draws_one_caption_per_sample_seed(tok):
    proc = processor(tok, train=True)
    sample = raw("\n".join(CAPTIONS) + "\n\n")
    want = {tuple(tok.encode_one(c)) for c in CAPTIONS}
    picks = []
    for seed in range(12):
        items = proc(sample, seed)
        assert len(items) == 1 and tuple(items[0][1]) in want
        assert items[0][1] == proc(sample, seed)[0][1], "same seed, same caption"
        picks.append(tuple(items[0][1]))
    assert set(picks) == want, "different seeds pick different captions"


def test_evaluation_returns_every_caption_with_the_same_image(tok, tmp_path):
    items = processor(tok, train=False)(raw(" red circle \r\n\nblue square above the triangle\na green shape"), 0)
    assert [ids for _, ids in items] == [tok.encode_one(c) for c in CAPTIONS]
    assert all(torch.equal(x, items[0][0]) for x, _ in items)
    shards = write_samples(tmp_path, [raw("\n".join(CAPTIONS), "a"), raw("one caption", "b")], 8)
    rows = [b.batch_size for b in build_eval_loader(shards, "pair", tokenizer=tok, image_size=16, patch_size=8,
                                                    batch_size=8)]
    assert rows == [4], "3 rows for the 3-caption image, 1 for the other"


def test_single_caption_draws_nothing(tok, monkeypatch):
    def no_draw(*_):
        raise AssertionError("a single caption must not consume any randomness")

    monkeypatch.setattr(stream, "random", types.SimpleNamespace(Random=no_draw))
    for train in (True, False):
        items = processor(tok, train)(raw("  blue square above the triangle \n"), 7)
        assert [ids for _, ids in items] == [tok.encode_one("blue square above the triangle")]


def test_captions_that_tokenise_to_nothing_are_dropped(tok):
    proc = processor(tok, train=False)
    assert [ids for _, ids in proc(raw("red circle\n \u200b \n"), 0)] == [tok.encode_one("red circle")]
    with pytest.raises(SampleError) as e:
        proc(raw("\u200b\n\u200b"), 0)
    assert e.value.reason == SkipStats.EMPTY_TEXT


class BatchDependentModel:
    """Image features that change with the batch size, as real kernels may in their last bits."""

    def image_features(self, images):
        return images.float().mean(dim=(1, 2, 3))[:, None].repeat(1, 4) + 1e-3 * images.shape[0]

    def text_features(self, ids, mask):
        return (ids * mask).float().sum(dim=1, keepdim=True).repeat(1, 4)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_retrieval_counts_an_image_once_when_its_captions_span_batches(tok, tmp_path, batch_size):
    """3 images x 3 captions: whatever the batch boundaries, retrieval sees 3 images and 9 texts."""
    from momo_ds.eval.retrieval import pair_features, retrieval_metrics

    samples = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        sample = raw("\n".join(f"{c} {i}" for c in CAPTIONS), f"s{i}")
        sample["jpg"] = encode_image(Image.new("RGB", (20, 18), colour))
        samples.append(sample)
    shards = write_samples(tmp_path, samples, 8)
    loader = build_eval_loader(shards, "pair", tokenizer=tok, image_size=16, patch_size=8, batch_size=batch_size)
    img, txt = pair_features(BatchDependentModel(), loader, torch.device("cpu"))
    assert img.shape[0] == txt.shape[0] == 9
    assert torch.unique(img, dim=0).shape[0] == 3
    assert retrieval_metrics(img, txt)["images"] == 3.0
