"""Raw webdataset sample → checked members: images to RGB, captions to str, labels to int.

Only the extensions below are ever decoded, by hand, from bytes: webdataset's automatic decoders are not used, so
nothing in a shard is unpickled. A member with any other extension makes the sample unusable
(``unknown_extension``), except harmless metadata (``json``), which is ignored and never parsed.
"""
from __future__ import annotations

import io
import re
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from .errors import SampleError, SkipStats

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXT = "txt"
LABEL_EXT = "cls"
IGNORED_EXTS = ("json",)  # common metadata beside images (img2dataset, HF ImageNet shards); never parsed
KNOWN_EXTS = frozenset(IMAGE_EXTS + (TEXT_EXT, LABEL_EXT) + IGNORED_EXTS)
# Pillow's JPEG opener also returns the multi-picture (MPO) JPEGs that many cameras write.
PIL_FORMATS = ("JPEG", "PNG", "WEBP")


def check_members(sample: dict, kind: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """Validate the member set of a raw sample for a stream ``kind``.

    Returns the (image, text, label) extensions to use (None where absent/not needed); raises SampleError for
    an unknown extension or a missing member.
    """
    m = {k: v for k, v in sample.items() if not k.startswith("__")}  # drop webdataset's __key__, __url__...
    unknown = sorted(k for k in m if k not in KNOWN_EXTS)
    if unknown:
        raise SampleError(SkipStats.UNKNOWN_EXTENSION, f"{sample.get('__key__')}: {unknown}")
    img_ext = next((e for e in IMAGE_EXTS if e in m), None)
    txt_ext = TEXT_EXT if TEXT_EXT in m else None
    cls_ext = LABEL_EXT if LABEL_EXT in m else None
    if kind in ("image", "pair") and img_ext is None:
        raise SampleError(SkipStats.MISSING_KEY, f"{sample.get('__key__')}: no image member")
    if kind in ("text", "pair") and txt_ext is None:
        raise SampleError(SkipStats.MISSING_KEY, f"{sample.get('__key__')}: no txt member")
    if kind == "text":
        img_ext = None
    if kind != "image":
        cls_ext = None
    if kind == "image":
        txt_ext = None
    for ext in (img_ext, txt_ext, cls_ext):
        if ext is not None and len(m[ext]) == 0:
            raise SampleError(SkipStats.EMPTY_MEMBER, f"{sample.get('__key__')}.{ext}")
    return img_ext, txt_ext, cls_ext


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB.

    16/32-bit grey (I;16*, I, F) is rescaled to 8 bits (Pillow's own conversion clips at 255); images with alpha
    or palette transparency are composited on white (dropping alpha would expose arbitrary colours under
    transparent pixels); CMYK, L, P, YCbCr... use Pillow's conversion.
    """
    mode = img.mode
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if arr.size and float(arr.max()) > 255.0:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB") if mode != "RGB" else img


def oriented_rgb(img: Image.Image, in_place: bool = False) -> Image.Image:
    """A decoded image as every image path leaves it: EXIF orientation applied, 8-bit RGB (:func:`_to_rgb`).
    in_place: transpose ``img`` itself (a freshly decoded file) rather than a copy (a caller's image)."""
    if "exif" in img.info:
        if in_place:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
    return img if img.mode == "RGB" else _to_rgb(img)  # most photos are RGB already


def decode_image(data: bytes) -> Image.Image:
    """Encoded image bytes → fully decoded RGB PIL image (EXIF orientation applied)."""
    if not data:
        raise SampleError(SkipStats.EMPTY_MEMBER, "zero-byte image")
    try:
        img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        img.load()  # decode now: truncated data raises here, not later inside a transform
        return oriented_rgb(img, in_place=True)
    except SampleError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad bytes
        raise SampleError(SkipStats.CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None


def decode_text(data: bytes) -> str:
    """UTF-8 caption/document bytes → stripped text (BOM removed); blank → SampleError(empty_text)."""
    if not data:
        raise SampleError(SkipStats.EMPTY_MEMBER, "zero-byte txt")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError(SkipStats.BAD_UTF8, str(e)) from None
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise SampleError(SkipStats.EMPTY_TEXT, "blank text")
    return text


INT64_MAX = 2**63 - 1  # labels are collated into an int64 tensor
_LABEL = re.compile(rb"\s*([0-9]+)\s*")  # bytes pattern: \s is ASCII whitespace only


def decode_label(data: bytes) -> int:
    """ASCII decimal class label, optionally padded with whitespace → int in [0, 2**63-1].

    Stricter than ``int()``, which also takes signs, underscores ("1_000") and non-ASCII digits ("٣"): a label
    is written by a tool, so anything else is damage. A label too large for int64 is refused here; it would
    otherwise overflow ``torch.tensor`` in collate and kill the DataLoader worker.
    """
    m = _LABEL.fullmatch(bytes(data))
    if m is None:
        raise SampleError(SkipStats.BAD_LABEL, repr(bytes(data[:20])))
    digits = m.group(1).lstrip(b"0") or b"0"
    if len(digits) > len(str(INT64_MAX)) or int(digits) > INT64_MAX:  # length first: int() refuses > 4300 digits
        raise SampleError(SkipStats.BAD_LABEL, f"{digits[:20].decode()}... does not fit int64")
    return int(digits)
