"""Retrieval on a Karpathy split file (dataset_coco.json layout + image folder) gives the numbers of the same data
written as pair shards by tools/make_shards.py; bad Karpathy inputs are one-line errors."""
import json

import pytest

from momo_ds.data.caption_shards import write_captions
from momo_ds.eval.encoder import load_encoder
from momo_ds.eval.karpathy import read_karpathy
from momo_ds.eval.runner import run_task
from tests.eval_fixtures import make_coco
from tools.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A 36-image COCO-style Karpathy file: 24 test images with 2-4 captions each, 12 train images."""
    return make_coco(tmp_path_factory.mktemp("coco"))


def test_karpathy_reader_keeps_split_order_and_captions(coco):
    test = read_karpathy(coco / "dataset_coco.json", coco, "test")
    assert [e.key for e in test] == [f"COCO_val2014_{i:012d}" for i in range(24)]
    assert all(e.path.parent.name == "val2014" and 2 <= len(e.captions) <= 4 for e in test)
    assert len(read_karpathy(coco / "dataset_coco.json", coco, ("train", "test"))) == 36


def test_karpathy_retrieval_equals_shards(coco, tmp_path):
    summary = write_captions(coco / "dataset_coco.json", tmp_path / "shards", image_root=coco, prefix="test",
                             shard_size=10, shuffle_seed=None, splits=["test"])
    assert summary.written == 24
    shards = sorted(str(p) for p in (tmp_path / "shards").glob("test-*.tar"))
    enc = load_encoder(coco / "encoder.safetensors")
    for batch_size in (7, 256):  # images split over batches, and all in one
        from_json = run_task(enc, "retrieval", karpathy=str(coco / "dataset_coco.json"), batch_size=batch_size)
        from_shards = run_task(enc, "retrieval", pairs=shards, batch_size=batch_size)
        assert from_json == from_shards
    assert from_json["images"] == 24 and from_json["texts"] == sum(
        len(e.captions) for e in read_karpathy(coco / "dataset_coco.json", coco))
    itm_json = run_task(enc, "itm", karpathy=str(coco / "dataset_coco.json"))
    assert itm_json == run_task(enc, "itm", pairs=shards)


def test_karpathy_cli_and_errors(coco, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate_main(["--encoder", str(coco / "encoder.safetensors"), "--task", "retrieval", "--karpathy",
                          str(coco / "dataset_coco.json"), "--images", str(coco), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["retrieval"]["images"] == 24
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    cases = [(["--karpathy", str(bad)], "no 'images' list"),
             (["--karpathy", str(coco / "dataset_coco.json"), "--split", "nope"], "unknown Karpathy split"),
             (["--karpathy", str(coco / "missing.json")], "not found"),
             (["--karpathy", str(coco / "dataset_coco.json"), "--images", str(tmp_path)], "image not found")]
    for args, needle in cases:
        code = evaluate_main(["--encoder", str(coco / "encoder.safetensors"), "--task", "retrieval", *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
