"""Synthetic dataset: deterministic by seed, captions mention the labelled object, manifest reuse."""
from __future__ import annotations

import io
import json

import webdataset as wds
from PIL import Image

from momo_ds.config import DataConfig, StreamConfig
from momo_ds.data import load_tokenizer, make_synthetic, resolve_synthetic


def read(pattern: str) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(pattern), wds.tarfile_to_samples()))


def test_deterministic_by_seed_and_captions_name_the_label(tmp_path):
    a = make_synthetic(tmp_path / "a", num=48, image_size=32, seed=1)
    b = make_synthetic(tmp_path / "b", num=48, image_size=32, seed=1)
    c = make_synthetic(tmp_path / "c", num=48, image_size=32, seed=2)
    assert a.num_classes == len(a.classes) == 16 and a.counts["pair"] == {"train": 48, "val": 64}
    for kind in ("image", "pair", "text"):
        for split in ("train", "val"):
            sa, sb = read(a.shards[kind][split]), read(b.shards[kind][split])
            strip = lambda ss: [{k: v for k, v in s.items() if k != "__url__"} for s in ss]  # noqa: E731
            assert strip(sa) == strip(sb), (kind, split)
    assert read(a.shards["pair"]["train"])[0]["jpg"] != read(c.shards["pair"]["train"])[0]["jpg"]
    same_tok = (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert same_tok, "tokenizer training is deterministic"
    pairs = read(a.shards["pair"]["train"])
    labels = set()
    for s in pairs:
        label = int(s["cls"])
        labels.add(label)
        assert f"large {a.classes[label]}" in s["txt"].decode(), s["txt"]
        for word in ("left", "right"):
            assert word not in s["txt"].decode()
        assert Image.open(io.BytesIO(s["jpg"])).size == (32, 32)
    assert len(labels) >= 10, "classes are spread"
    docs = [s["txt"].decode() for s in read(a.shards["text"]["train"])]
    assert all(d.count(".") >= 3 for d in docs), "documents of several sentences"
    tok = load_tokenizer(a.tokenizer)
    assert tok.vocab_size <= 512 and all(1 not in tok.encode([d])[0] for d in docs[:10]), "no [UNK]"


def test_manifest_reuse_and_resolve(tmp_path):
    info = make_synthetic(tmp_path, num=16, image_size=16, seed=0)
    stamp = (tmp_path / "manifest.json").stat().st_mtime_ns
    again = make_synthetic(tmp_path, num=16, image_size=16, seed=0)
    assert again == info and (tmp_path / "manifest.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "manifest.json").read_text())["params"]["num"] == 16
    cfg = DataConfig(streams=[StreamConfig(name="img", kind="image"),
                              StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0})],
                     tokenizer="synthetic", synthetic=True, synthetic_num=16, image_size=16)
    resolved, info2 = resolve_synthetic(cfg, tmp_path)
    assert info2 == info and resolved.tokenizer == info.tokenizer
    assert resolved.streams[0].shards == [info.shards["image"]["train"]]
    assert resolved.streams[1].shards == [info.shards["text"]["train"]]
    assert cfg.streams[0].shards == [], "the input config is not modified"
