"""Bad input: skipped and counted per stream and reason (also from worker processes); bad streams fail at start."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from momo_ds.config import DataConfig, StreamConfig
from momo_ds.data import DataError, SampleError, SkipStats, build_eval_loader, build_stage_loader, check_streams
from momo_ds.data.decode import INT64_MAX, decode_image, decode_label
from momo_ds.data.fixtures import (encode_image, image_samples, pair_samples, text_samples, train_test_tokenizer,
                                   write_samples)


class _TouchOnUnpickle:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_test_tokenizer(tmp_path_factory.mktemp("tok") / "tok.json")


def bad_shards(d: Path, marker: Path) -> dict[str, list[str]]:
    jpg = image_samples(1, (16, 16))[0]["jpg"]
    img = image_samples(8, (16, 16))
    img += [{"__key__": "truncated", "jpg": jpg[: len(jpg) // 2], "cls": b"1"},
            {"__key__": "garbage", "jpg": b"\xff\xd8 not really a jpeg", "cls": b"1"},
            {"__key__": "zero", "jpg": b"", "cls": b"1"},
            {"__key__": "badlabel", "jpg": jpg, "cls": b"cat"},
            {"__key__": "nojpg", "cls": b"3"},
            {"__key__": "pickled", "jpg": jpg, "cls": b"2", "pyd": pickle.dumps(_TouchOnUnpickle(str(marker)))}]
    txt = text_samples(8)
    txt += [{"__key__": "latin1", "txt": "caf\xe9 cr\xe8me".encode("latin-1")},
            {"__key__": "blank", "txt": b"  \n\t "},
            {"__key__": "zero", "txt": b""},
            {"__key__": "weird", "txt": b"a caption", "pth": b"\x80\x04not a tensor"}]
    pair = pair_samples(8, (16, 16))
    pair += [{"__key__": "notxt", "jpg": jpg}, {"__key__": "noimg", "txt": b"a red circle"},
             {"__key__": "emptycap", "jpg": jpg, "txt": b"   "}]
    out = {"image": write_samples(d / "image", img, 20), "text": write_samples(d / "text", txt, 20),
           "pair": write_samples(d / "pair", pair, 20)}
    # A broken tar (cut in the middle of a member) after a good one.
    good = write_samples(d / "broken", image_samples(4, (16, 16), start=100), 4)[0]
    with tarfile.open(good) as tf:
        last = tf.getmembers()[-1]  # cut the archive in the middle of its last member's data
    broken = d / "broken" / "broken.tar"
    broken.write_bytes(Path(good).read_bytes()[: last.offset_data + last.size // 2])
    out["image"].append(str(broken))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_and_counted(tmp_path, tok, workers):
    marker = tmp_path / "unpickled"
    shards = bad_shards(tmp_path, marker)
    cfg = DataConfig(streams=[
        StreamConfig(name="img", kind="image", shards=shards["image"], batch_size=4),
        StreamConfig(name="txt", kind="text", objectives={"mlm": 1.0}, shards=shards["text"], batch_size=4),
        StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0}, shards=shards["pair"], batch_size=4)],
        image_size=16, num_workers=workers, shuffle_buffer=4)
    with build_stage_loader(cfg, tokenizer=tok, patch_size=8) as loader:
        batches = [loader.next() for _ in range(8)]  # several epochs of every stream
        counts = loader.skip_counts()
    assert not marker.exists(), "nothing in a shard is ever unpickled"
    good_labels = {int(v) for b in batches for v in b["img"].labels}
    assert good_labels <= set(range(8)) | set(range(100, 104)) and good_labels & set(range(100, 104))
    img, txt, pair = counts["img"], counts["txt"], counts["pair"]
    for reason in (SkipStats.CORRUPT_IMAGE, SkipStats.EMPTY_MEMBER, SkipStats.BAD_LABEL, SkipStats.MISSING_KEY,
                   SkipStats.UNKNOWN_EXTENSION, SkipStats.BROKEN_TAR):
        assert img.get(reason, 0) >= 1, (reason, img)
    assert img[SkipStats.CORRUPT_IMAGE] % 2 == 0, "truncated + garbage, once per epoch"
    for reason in (SkipStats.BAD_UTF8, SkipStats.EMPTY_TEXT, SkipStats.EMPTY_MEMBER, SkipStats.UNKNOWN_EXTENSION):
        assert txt.get(reason, 0) >= 1, (reason, txt)
    assert pair.get(SkipStats.MISSING_KEY, 0) >= 2 and pair.get(SkipStats.EMPTY_TEXT, 0) >= 1, pair
    assert set(img) | set(txt) | set(pair) <= set(SkipStats.REASONS)


def test_missing_shard_is_a_clear_error(tmp_path, tok):
    shards = write_samples(tmp_path, image_samples(4, (16, 16)), 4)
    cfg = DataConfig(streams=[StreamConfig(name="img", kind="image", batch_size=2,
                                           shards=[shards[0], str(tmp_path / "shard-{000001..000002}.tar")])],
                     image_size=16, num_workers=0)
    for check in (lambda: build_stage_loader(cfg, tokenizer=tok, patch_size=8), lambda: check_streams(cfg)):
        with pytest.raises(DataError, match=r"stream 'img': shard not found: .*shard-000001\.tar") as e:
            check()
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no shards"):
        build_stage_loader(DataConfig(streams=[StreamConfig(name="x", shards=[])], image_size=16),
                           tokenizer=tok, patch_size=8)


def test_stream_without_usable_samples_is_a_clear_error(tmp_path, tok):
    shards = write_samples(tmp_path, [{"__key__": f"k{i}", "txt": b"only text"} for i in range(3)], 3)
    cfg = DataConfig(streams=[StreamConfig(name="images", kind="image", shards=shards, batch_size=2)],
                     image_size=16, num_workers=0)
    with pytest.raises(DataError, match=r"stream 'images' \(image\) yields no usable sample.*missing_key"):
        build_stage_loader(cfg, tokenizer=tok, patch_size=8)
    with pytest.raises(DataError, match="yields no usable sample"):
        build_eval_loader(shards, "pair", tokenizer=tok, image_size=16, patch_size=8, batch_size=2)


def test_pipe_urls(tmp_path, tok):
    shard = write_samples(tmp_path, text_samples(6), 6)[0]
    loader = build_eval_loader([f"pipe:cat {shard}"], "text", tokenizer=tok, image_size=16, patch_size=8,
                               batch_size=4)
    assert [b.batch_size for b in loader] == [4, 2]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P+transparency", "RGBA", "CMYK", "I;16", "1"])
def test_any_image_mode_decodes_to_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.arange(120, dtype=np.uint16).reshape(12, 10) * 500))
        assert img.mode.startswith("I;16")
    else:
        img = rgb.convert(mode.split("+")[0])
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    data = encode_image(img, fmt, **({"transparency": 0} if "+" in mode else {}))
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (10, 12)
    if mode == "I;16":
        arr = np.asarray(out)[..., 0]
        assert arr.max() > 200 and arr.min() == 0, "16-bit range rescaled, not clipped"
    if mode == "RGBA":
        transparent = rgb.convert("RGBA")
        transparent.putalpha(0)
        assert np.asarray(decode_image(encode_image(transparent, "PNG"))).min() == 255, "alpha on white"


def test_32bit_and_float_modes_to_rgb():
    from momo_ds.data.decode import _to_rgb

    for arr in (np.arange(120, dtype=np.int32).reshape(12, 10) * 500, np.linspace(0, 255, 120).reshape(12, 10)):
        img = Image.fromarray(arr.astype(np.int32) if arr.dtype == np.int32 else arr.astype(np.float32))
        assert img.mode in ("I", "F")
        out = np.asarray(_to_rgb(img))
        assert out.shape == (12, 10, 3) and out.max() > 200 and out.min() == 0


def test_decode_rejects_unsupported_formats():
    gif = encode_image(Image.new("RGB", (4, 4)), "GIF")
    with pytest.raises(SampleError) as e:
        decode_image(gif)
    assert e.value.reason == SkipStats.CORRUPT_IMAGE
    with pytest.raises(SampleError) as e:
        decode_image(b"")
    assert e.value.reason == SkipStats.EMPTY_MEMBER


GOOD_LABELS = {b"0": 0, b"7": 7, b" 7 \n": 7, b"\t42\r\n": 42, b"007": 7, str(INT64_MAX).encode(): INT64_MAX,
               b"0" * 5000 + b"3": 3}
BAD_LABELS = [b"99999999999999999999999", str(INT64_MAX + 1).encode(), b"9" * 5000, b"-1", b"+5", b"1_000",
              "\u0663".encode(), "\uff17".encode(), b"5.0", b"0x10", b"1e3", b"7 7", b"cat", b" ", b"\xff"]


@pytest.mark.parametrize("data", list(GOOD_LABELS))
def test_decode_label_accepts_padded_ascii_digits(data):
    assert decode_label(data) == GOOD_LABELS[data]


@pytest.mark.parametrize("data", BAD_LABELS)
def test_decode_label_refuses_signs_underscores_non_ascii_digits_and_int64_overflow(data):
    with pytest.raises(SampleError) as e:
        decode_label(data)
    assert e.value.reason == SkipStats.BAD_LABEL


def test_label_too_large_for_int64_is_skipped_not_a_dead_worker(tmp_path, tok):
    """The overflowing label used to pass decode and kill the DataLoader worker in collate (torch.tensor)."""
    jpg = image_samples(1, (16, 16))[0]["jpg"]
    good = [{"__key__": f"good{i}", "jpg": jpg, "cls": data} for i, data in enumerate((b"0", b" 7 ", b"007"))]
    good.append({"__key__": "max", "jpg": jpg, "cls": str(INT64_MAX).encode()})
    bad = [{"__key__": f"bad{i}", "jpg": jpg, "cls": data} for i, data in enumerate(BAD_LABELS)]
    shards = write_samples(tmp_path, bad[:7] + good + bad[7:], 8)
    cfg = DataConfig(streams=[StreamConfig(name="img", kind="image", shards=shards, batch_size=2)],
                     image_size=16, num_workers=1, shuffle_buffer=4)
    with build_stage_loader(cfg, tokenizer=tok, patch_size=8) as loader:
        labels = {int(v) for _ in range(6) for v in loader.next()["img"].labels}
        counts = loader.skip_counts()["img"]
    assert labels == {0, 7, INT64_MAX}
    assert set(counts) == {SkipStats.BAD_LABEL} and counts[SkipStats.BAD_LABEL] >= len(BAD_LABELS), counts
