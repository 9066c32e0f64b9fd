"""tools/make_shards.py: every input format round-trips into shards the loader reads; skips are counted."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from momo_ds.data import build_eval_loader
from momo_ds.data.fixtures import encode_image, train_test_tokenizer
from momo_ds.data.caption_shards import write_captions
from momo_ds.data.shard_writer import write_image_folder
from momo_ds.data.text_shards import write_texts

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
    s = write_texts([tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.txt"], tmp_path / "out", shard_size=10)
    docs = [smp["txt"].decode() for smp in read(s)]
    assert docs == ["First paragraph still first.", "Second paragraph.", "json doc one", "json doc two"]
    assert s.skipped == {"bad_record": 1, "bad_utf8": 1, "empty_text": 1, "missing_field": 1}
    lines = write_texts([tmp_path / "a.txt"], tmp_path / "lines", unit="line", prefix="l")
    assert [smp["txt"].decode() for smp in read(lines)] == ["First paragraph", "still first.", "Second paragraph."]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "coco"])
def test_caption_files(tmp_path, fmt):
    images = make_images(tmp_path / "images", 3)
    rows = [("im0.png", "a dark picture"), ("im1.png", "a red one"), ("im2.png", "another red one"),
            ("missing.png", "no image for this"), ("im0.png", "  "), ("im0.png", "the  dark one\nagain")]
    path = tmp_path / f"captions.{'json' if fmt == 'coco' else fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
    elif fmt == "json":
        path.write_text(json.dumps([{"image": i, "caption": c} for i, c in rows]))
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
    assert s.written == 3 and s.skipped == {"empty_caption": 1, "missing_image": 1}, "one sample per image"
    got = {(smp["png"], smp["txt"].decode()) for smp in read(s)}
    want = {(images[0].read_bytes(), "a dark picture\nthe dark one again"), (images[1].read_bytes(), "a red one"),
            (images[2].read_bytes(), "another red one")}
    assert got == want, "all captions of an image in one txt, one per line, whitespace-cleaned"
    assert s.extra["captions"] == "4" and s.extra["first_missing_image"] == str(tmp_path / "images" / "missing.png")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, capsys, tool):
    (tmp_path / "doc.txt").write_text("one\n\ntwo\n\nthree\n")
    assert tool.main(["texts", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "out"), "--shard-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "samples written" in out and "train-{000000..000001}.tar" in out


def coco_json(path: Path, captions: list[tuple[str, str]]) -> Path:
    names = sorted({i for i, _ in captions})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "images": [{"id": k, "file_name": n} for k, n in enumerate(names)],
        "annotations": [{"id": j, "image_id": names.index(i), "caption": c} for j, (i, c) in enumerate(captions)]}))
    return path


def test_coco_default_image_root_is_the_split_folder(tmp_path, capsys, tool):
    coco = tmp_path / "coco"
    make_images(coco / "val2017", 2)
    ann = coco_json(coco / "annotations" / "captions_val2017.json",
                    [("im0.png", "a dark picture"), ("im1.png", "a red one"), ("im0.png", "dark again")])
    s = write_captions(ann, tmp_path / "out")
    assert s.written == 2 and not s.skipped and Path(s.extra["image_root"]) == (coco / "val2017").absolute()
    assert tool.main(["captions", str(ann), "--out", str(tmp_path / "cli")]) == 0
    assert f"image_root: {(coco / 'val2017').absolute()}" in capsys.readouterr().out

    (coco / "val2017").rename(coco / "elsewhere")  # no split folder: the json's folder, and the lookup is shown
    assert tool.main(["captions", str(ann), "--out", str(tmp_path / "cli2"), "--no-shuffle"]) == 1
    out = capsys.readouterr().out
    assert f"image_root: {ann.parent}" in out and f"first_missing_image: {ann.parent / 'im0.png'}" in out
    assert "no samples written: every input was skipped (missing_image 2); check the image root" in out


def test_eval_sees_every_caption_of_an_image(tmp_path):
    make_images(tmp_path / "images", 2)
    rows = [("im0.png", "red circle"), ("im0.png", "a red shape"), ("im1.png", "blue square"),
            ("im0.png", "there is a circle")]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
    s = write_captions(tmp_path / "c.jsonl", tmp_path / "out", image_root=tmp_path / "images")
    assert s.written == 2 and s.extra["captions"] == "4"
    tok = train_test_tokenizer(tmp_path / "tok.json")
    batches = list(build_eval_loader([s.pattern], "pair", tokenizer=tok, image_size=8, patch_size=4, batch_size=3))
    images = torch.cat([b.image.images for b in batches])
    texts = [ids[m].tolist() for b in batches for ids, m in zip(b.text.full_ids, b.text.full_mask)]
    assert len(texts) == 4 and sorted(texts) == sorted(tok.encode_one(c) for _, c in rows)
    assert torch.unique(images, dim=0).shape[0] == 2, "the image's rows carry the identical image"


@pytest.mark.parametrize("header", [["url", "title"], ["image_url", "caption"], ["file", "TEXT"], None])
def test_caption_table_columns(tmp_path, header):
    images = make_images(tmp_path, 2)
    path = tmp_path / "cc.tsv"
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        if header:
            w.writerow(header)
            w.writerows([(p.name, f"caption {i}") for i, p in enumerate(images)])
        else:  # CC3M's own layout: caption<TAB>url, no header
            w.writerows([(f"caption {i}", p.name) for i, p in enumerate(images)])
    s = write_captions(path, tmp_path / "out", shuffle_seed=None)
    assert s.written == 2 and not s.skipped
    assert [smp["txt"].decode() for smp in read(s)] == ["caption 0", "caption 1"]


def test_caption_table_without_known_columns_is_one_clear_error(tmp_path, capsys, tool):
    path = tmp_path / "c.csv"
    path.write_text("picture,description\na.jpg,a cat\n")
    with pytest.raises(ValueError, match=r"no image column among the columns found \('picture', 'description'\)"
                                         r".*--image-field and --caption-field"):
        write_captions(path, tmp_path / "out")
    assert tool.main(["captions", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'picture', 'description'" in err
    assert tool.main(["captions", str(path), "--out", str(tmp_path / "o"), "--image-field", "picture",
                      "--caption-field", "description", "--no-verify"]) == 1  # named: rows read (image missing)


def test_caption_urls_say_download_first(tmp_path):
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_text("a dog on a beach\thttp://example.com/a.jpg\nsome text\thttps://example.com/b?w=3\n")
    s = write_captions(path, tmp_path / "out")
    assert s.written == 0 and s.skipped == {"remote_url": 2} and "download them first" in s.why_empty()


def test_flat_image_folder_is_unlabelled(tmp_path, capsys, tool):
    make_images(tmp_path / "flat", 3)
    s = write_image_folder(tmp_path / "flat", tmp_path / "out")
    assert s.written == 3 and "flat folder" in s.extra["labels"] and "class_index" not in s.extra
    assert all("png" in smp and "cls" not in smp for smp in read(s))
    tok = train_test_tokenizer(tmp_path / "tok.json")
    batches = list(build_eval_loader([s.pattern], "image", tokenizer=tok, image_size=8, patch_size=4, batch_size=4))
    assert [b.images.shape[0] for b in batches] == [3] and batches[0].labels is None
    with pytest.raises(ValueError, match="no class sub-folders"):
        write_image_folder(tmp_path / "flat", tmp_path / "out2", class_index={"a": 0})

    make_images(tmp_path / "flat" / "cat", 1)  # with a class folder, loose images are counted, not dropped
    s = write_image_folder(tmp_path / "flat", tmp_path / "out3")
    assert s.written == 1 and s.skipped == {"outside_class_folder": 3}

    (tmp_path / "empty").mkdir()
    assert tool.main(["images", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "out4")]) == 1
    assert f"no samples written: no images found under {tmp_path / 'empty'}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["images", "texts", "captions", "coco_invalid", "class_index"])
def test_unusable_input_is_one_error_line(tmp_path, capsys, tool, command):
    out = ["--out", str(tmp_path / "out")]
    bad = tmp_path / "captions_train2017.json"
    bad.write_text("{not json")
    argv = {"images": ["images", "--root", str(tmp_path / "nope")],
            "texts": ["texts", str(tmp_path / "nope.txt")],
            "captions": ["captions", str(tmp_path / "nope.jsonl")],
            "coco_invalid": ["captions", str(bad)],
            "class_index": ["images", "--root", str(tmp_path), "--class-index", str(tmp_path / "nope.json")]}[command]
    assert tool.main(argv + out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and ("nope" in err or "not valid JSON" in err), err


def test_texts_json_arrays(tmp_path):
    (tmp_path / "strings.json").write_text(json.dumps(["doc  one", "", "doc two"]))
    (tmp_path / "objects.json").write_text(json.dumps([{"body": "doc three"}, {"other": 1}, 5, {"body": "doc four"}]))
    (tmp_path / "lines.json").write_text('{"body": "doc five"}\n{"body": "doc six"}\n')  # JSON lines named .json
    (tmp_path / "README").write_text("doc seven\n")  # plain text without a suffix
    (tmp_path / "notes.md").write_text("doc eight\n")
    paths = [tmp_path / n for n in ("strings.json", "objects.json", "lines.json", "README", "notes.md")]
    s = write_texts(paths, tmp_path / "out", text_field="body")
    assert [smp["txt"].decode() for smp in read(s)] == [f"doc {w}" for w in
                                                        "one two three four five six seven eight".split()]
    assert s.skipped == {"bad_record": 1, "empty_text": 1, "missing_field": 1}
    (tmp_path / "object.json").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="array of strings or of objects with 'body', not a JSON dict"):
        write_texts([tmp_path / "object.json"], tmp_path / "out2", text_field="body")


@pytest.mark.parametrize("suffix", [".csv", ".gz", ".arrow", ".zip"])
def test_texts_refuses_structured_and_compressed_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_text("text,label\nhello,1\n")
    with pytest.raises(ValueError, match=f"not \\{suffix}; "):
        write_texts([path], tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything is written"


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_texts_parquet_without_pyarrow_says_how(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"needs pyarrow \(pip install pyarrow\)"):
        write_texts([tmp_path / "d.parquet"], tmp_path / "out")


def test_texts_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["doc one", None, "doc two"], "n": [1, 2, 3]}), tmp_path / "d.parquet")
    s = write_texts([tmp_path / "d.parquet"], tmp_path / "out", text_field="body")
    assert [smp["txt"].decode() for smp in read(s)] == ["doc one", "doc two"] and s.skipped == {"missing_field": 1}
    for field, msg in (("text", "no column 'text'"), ("n", "holds int64, not text")):
        with pytest.raises(ValueError, match=msg):
            write_texts([tmp_path / "d.parquet"], tmp_path / "o", text_field=field)
