"""tools/make_shards.py: every input format round-trips into shards the loader reads; skips are counted."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from momo_ds.data import build_eval_loader
from momo_ds.data.fixtures import encode_image, train_test_tokenizer
from momo_ds.data.shard_writer import write_captions, write_image_folder, write_texts

ROOT = Path(__file__).resolve().parents[1]


def read(summary) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(summary.pattern), wds.tarfile_to_samples()))


def make_images(folder: Path, n: int, fmt: str = "PNG") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"im{i}.{'png' if fmt == 'PNG' else 'jpg'}"
        p.write_bytes(encode_image(Image.new("RGB", (12 + i, 10), (10 * i, 0, 0)), fmt))
        out.append(p)
    return out


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    files = {c: make_images(root / c, 3, fmt) for c, fmt in (("cat", "PNG"), ("dog", "JPEG"))}
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    (root / "dog" / "empty.png").write_bytes(b"")
    s = write_image_folder(root, tmp_path / "out", shard_size=2, prefix="train")
    assert s.written == 6 and len(s.shards) == 3
    assert s.skipped == {"empty_file": 1, "unreadable_image": 1, "unsupported_extension": 1}
    assert json.loads(Path(s.extra["class_index"]).read_text()) == {"cat": 0, "dog": 1}
    samples = read(s)
    by_bytes = {p.read_bytes(): (c, p.suffix) for c, ps in files.items() for p in ps}
    assert len(samples) == 6
    for smp in samples:
        ext = "png" if "png" in smp else "jpg"
        cls, suffix = by_bytes[smp[ext]]  # stored unchanged
        assert int(smp["cls"]) == {"cat": 0, "dog": 1}[cls] and suffix == f".{ext}"
    tok = train_test_tokenizer(tmp_path / "tok.json")
    labels = [int(v) for b in build_eval_loader([s.pattern], "image", tokenizer=tok, image_size=8, patch_size=4,
                                                batch_size=4) for v in b.labels]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]


def test_texts_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\n\nSecond  paragraph.\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "json doc one"}\n{"body": "wrong field"}\nnot json\n'
                                       b'{"text": "   "}\n{"text": "json doc two"}\n')
    (tmp_path / "c.txt").write_bytes("caf\xe9".encode("latin-1"))
    s = write_texts([tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.txt", tmp_path / "nope.txt"],
                    tmp_path / "out", shard_size=10)
    docs = [smp["txt"].decode() for smp in read(s)]
    assert docs == ["First paragraph still first.", "Second paragraph.", "json doc one", "json doc two"]
    assert s.skipped == {"bad_record": 1, "bad_utf8": 1, "empty_text": 1, "missing_field": 1, "missing_file": 1}
    lines = write_texts([tmp_path / "a.txt"], tmp_path / "lines", unit="line", prefix="l")
    assert [smp["txt"].decode() for smp in read(lines)] == ["First paragraph", "still first.", "Second paragraph."]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "coco"])
def test_caption_files(tmp_path, fmt):
    images = make_images(tmp_path / "images", 3)
    rows = [("im0.png", "a dark picture"), ("im1.png", "a red one"), ("im2.png", "another red one"),
            ("missing.png", "no image for this"), ("im0.png", "  ")]
    path = tmp_path / f"captions.{'json' if fmt == 'coco' else fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
    elif fmt in ("csv", "tsv"):
        with path.open("w", newline="") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["filepath", "text"])
            w.writerows(rows)
    else:
        names = sorted({i for i, _ in rows})
        path.write_text(json.dumps({
            "images": [{"id": k, "file_name": n} for k, n in enumerate(names)],
            "annotations": [{"id": j, "image_id": names.index(i), "caption": c} for j, (i, c) in enumerate(rows)]}))
    s = write_captions(path, tmp_path / "out", image_root=tmp_path / "images", shard_size=2)
    assert s.written == 3 and s.skipped == {"empty_caption": 1, "missing_image": 1}
    got = {(smp["png"], smp["txt"].decode()) for smp in read(s)}
    want = {(images[int(i[2])].read_bytes(), c) for i, c in rows[:3]}
    assert got == want


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "doc.txt").write_text("one\n\ntwo\n\nthree\n")
    assert tool.main(["texts", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "out"), "--shard-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "samples written" in out and "train-{000000..000001}.tar" in out
