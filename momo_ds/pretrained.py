"""A trained encoder for downstream use: images and strings in, embeddings out.

    import momo_ds
    m = momo_ds.load_pretrained("runs/momo-tiny/stage3")
    sim = m.similarity(m.image_features("cat.jpg"), m.text_features(["a cat", "a dog"]))   # [1, 2] cosine

Inputs take the evaluation path, with the project's own functions, so features equal evaluation's bitwise (for
the same batches): image files are decoded as shard images are (``decode_image``: EXIF orientation, RGB), PIL
images oriented and converted the same way, then resized and centre-cropped (``build_image_transform("none")``)
and normalised with ImageNet mean/std (``normalize_images``); texts are tokenised with the training tokenizer
(no special tokens: the model adds its [CLS]), truncated to the evaluation length (``text_max_len``: min(128,
model.max_text_len)) and right-padded with the pad id and a mask (``pad_texts``). Everything runs under
``torch.no_grad`` (not inference_mode: its tensors could not feed a probe trained on top of them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

import torch
from PIL import Image
from torch import Tensor

from momo_ds.config import ModelConfig
from momo_ds.data.transforms import build_image_transform, normalize_images
from momo_ds.eval.encoder import LoadedEncoder

if TYPE_CHECKING:
    from momo_ds.data.text import Tokenizer

ImageItem = Union[Image.Image, str, os.PathLike]
ImageInput = Union[ImageItem, Sequence[ImageItem], Tensor]
TextInput = Union[str, Sequence[str]]
DEFAULT_BATCH_SIZE = 256  # tools/evaluate.py's feature batch


def as_rgb(image: Image.Image) -> Image.Image:
    """A PIL image oriented and converted to 8-bit RGB as ``decode_image`` leaves a decoded file, so a file path
    and ``Image.open`` of it give the same pixels."""
    from momo_ds.data.decode import oriented_rgb

    return oriented_rgb(image)


def read_image(path: Union[str, os.PathLike]) -> Image.Image:
    """An image file decoded exactly as a shard's image member (one-line ValueError when it cannot be)."""
    from momo_ds.data.decode import decode_image
    from momo_ds.data.errors import SampleError

    try:
        return decode_image(Path(path).read_bytes())
    except OSError as e:
        raise ValueError(f"image {path}: cannot read ({e.strerror or e})") from None
    except SampleError as e:
        raise ValueError(f"image {path}: cannot decode ({e})") from None


class ImageTransform:
    """PIL image -> normalised float32 [3, S, S]: the evaluation transform, then ImageNet normalisation.
    Picklable (DataLoader workers); ``pixels`` gives the uint8 [3, S, S] before normalisation."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self._resize_crop = build_image_transform("none", image_size)

    def pixels(self, image: Image.Image) -> Tensor:
        return self._resize_crop(as_rgb(image))

    def __call__(self, image: Image.Image) -> Tensor:
        return normalize_images(self.pixels(image)[None])[0]


def _text_list(texts: TextInput) -> list[str]:
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts: expected a string or a non-empty list of strings")
    return list(texts)


def _chunks(items: Union[list, Tensor], size: int) -> Iterator[Union[list, Tensor]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


class Pretrained:
    """A loaded encoder (eval mode) with its tokenizer and image transform; build with :func:`load_pretrained`.

    Shapes: B images or texts, S = config.img_size, N = (S / patch_size)^2 patches, L = longest text of the
    call in tokens, D = embed_dim, P = proj_dim. Outputs stay on ``device``.
    """

    def __init__(self, encoder: LoadedEncoder, tokenizer: Optional["Tokenizer"], source: Path, max_text_len: int,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = encoder.model
        self.config: ModelConfig = encoder.config
        self.meta = encoder.meta
        self.has_itm_head = encoder.has_itm_head
        self.tokenizer = tokenizer
        self.transform = ImageTransform(self.config.img_size)
        self.device = next(self.model.parameters()).device
        self.source, self.max_text_len, self.batch_size = source, max_text_len, batch_size

    def __repr__(self) -> str:
        c = self.config
        return (f"Pretrained({str(self.source)!r}, {c.img_size}px/{c.patch_size}, D={c.embed_dim}, depth={c.depth}, "
                f"P={c.proj_dim}, tokenizer={getattr(self.tokenizer, 'name', None)!r}, device={self.device})")

    # ---------------------------------------------------------------------------------------------- inputs
    def preprocess(self, images: ImageInput) -> Tensor:
        """A PIL image, a file path, a list of them, or a tensor -> float32 [B, 3, S, S] on ``device``.

        A float tensor [B, 3, S, S] (or [3, S, S]) is taken as already normalised; a uint8 one as the transform's
        pixels (``transform.pixels``), normalised here."""
        if isinstance(images, Tensor):
            x = images[None] if images.dim() == 3 else images
            if x.dtype == torch.uint8:
                x = normalize_images(x)
            elif not x.is_floating_point():
                raise ValueError(f"images: expected a float (normalised) or uint8 tensor, got {x.dtype}")
            return x.to(self.device, torch.float32)
        items = self._image_items(images)
        return normalize_images(torch.stack([self._pixels(x, i) for i, x in enumerate(items)])).to(self.device)

    def _image_items(self, images: ImageInput) -> Union[list, Tensor]:
        if isinstance(images, Tensor):
            return images[None] if images.dim() == 3 else images
        if isinstance(images, (Image.Image, str, os.PathLike)):
            return [images]
        if not isinstance(images, (list, tuple)) or not images:
            empty = " (empty)" if isinstance(images, (list, tuple)) else ""
            raise ValueError(f"images: expected a PIL image, a file path, a non-empty list of them or a tensor "
                             f"[B, 3, H, W], got {type(images).__name__}{empty}")
        return list(images)

    def _pixels(self, item, i: int) -> Tensor:
        if isinstance(item, (str, os.PathLike)):
            item = read_image(item)
        elif not isinstance(item, Image.Image):
            raise ValueError(f"images[{i}]: expected a PIL image or a file path, got {type(item).__name__}")
        return self.transform.pixels(item)

    def tokenize(self, texts: TextInput) -> tuple[Tensor, Tensor]:
        """A string or a list of strings -> (ids [B, L] int64, mask [B, L] bool, True on real tokens) on ``device``,
        each text stripped, tokenised without special tokens and cut to ``max_text_len`` tokens."""
        from momo_ds.data.collate import pad_texts

        if self.tokenizer is None:
            raise ValueError(f"{self.source}: no tokenizer recorded with the encoder: pass "
                             "load_pretrained(..., tokenizer=...)")
        seqs = []
        for i, text in enumerate(_text_list(texts)):
            ids = self.tokenizer.encode_one(text.strip())[: self.max_text_len]
            if not ids:
                raise ValueError(f"texts[{i}] {text[:40]!r}: no tokens (empty text)")
            seqs.append(ids)
        ids, mask = pad_texts(seqs, self.tokenizer.pad_id)
        return ids.to(self.device), mask.to(self.device)

    def _pairs(self, images: ImageInput, texts: TextInput) -> tuple[Tensor, Tensor, Tensor]:
        """Row-aligned (images [B, 3, S, S], ids [B, L], mask [B, L]); one image or one text is repeated to match."""
        x, (ids, mask) = self.preprocess(images), self.tokenize(texts)
        if x.shape[0] == 1 and ids.shape[0] > 1:
            x = x.expand(ids.shape[0], -1, -1, -1)
        elif ids.shape[0] == 1 and x.shape[0] > 1:
            ids, mask = ids.expand(x.shape[0], -1), mask.expand(x.shape[0], -1)
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"{x.shape[0]} images and {ids.shape[0]} texts: pairs need as many of each (or one)")
        return x, ids, mask

    # ------------------------------------------------------------------------------------------- encodings
    @torch.no_grad()
    def encode_image(self, images: ImageInput) -> Tensor:
        """-> final hidden states [B, 1 + N, D] of [CLS] + every patch (after the final norm); one pass."""
        return self.model.encode_image(self.preprocess(images))

    @torch.no_grad()
    def encode_text(self, texts: TextInput) -> tuple[Tensor, Tensor]:
        """-> (h [B, 1 + L, D], key_mask [B, 1 + L] bool: True on [CLS] and real tokens); one pass."""
        ids, mask = self.tokenize(texts)
        return self.model.encode_text(ids, None, mask)

    @torch.no_grad()
    def encode_pair(self, images: ImageInput, texts: TextInput) -> tuple[Tensor, Tensor]:
        """Joint encoding of row-aligned pairs -> (h [B, 1 + N + L, D] over [CLS, patches, text], key_mask
        [B, 1 + N + L]); one pass."""
        x, ids, mask = self._pairs(images, texts)
        return self.model.encode_pair(x, ids, None, mask)

    @torch.no_grad()
    def cls_features(self, images: ImageInput) -> Tensor:
        """-> final-norm [CLS] state [B, D] (linear probes; what the timm export's pooled output is)."""
        return torch.cat([self.model.cls_features(self.preprocess(c)) for c in self._batches(images)])

    @torch.no_grad()
    def image_features(self, images: ImageInput) -> Tensor:
        """-> L2-normalised contrastive embeddings [B, P] float32, ``batch_size`` images per forward pass."""
        return torch.cat([self.model.image_features(self.preprocess(c)) for c in self._batches(images)])

    @torch.no_grad()
    def text_features(self, texts: TextInput) -> Tensor:
        """-> L2-normalised contrastive embeddings [B, P] float32, ``batch_size`` texts per forward pass (each
        padded to its own longest text, as evaluation pads each batch)."""
        chunks = _chunks(_text_list(texts), self.batch_size)
        return torch.cat([self.model.text_features(*self.tokenize(c)) for c in chunks])

    def _batches(self, images: ImageInput) -> Iterator[Union[list, Tensor]]:
        return _chunks(self._image_items(images), self.batch_size)

    @property
    def logit_scale(self) -> float:
        """The trained contrastive scale exp(logit_scale), clamped at 100 as the contrastive loss uses it."""
        from momo_ds.objectives.contrastive import logit_scale_value

        return float(logit_scale_value(self.model.logit_scale.detach()))

    @torch.no_grad()
    def similarity(self, image_feats: Tensor, text_feats: Tensor, scale: bool = False) -> Tensor:
        """image_feats [Ni, P], text_feats [Nt, P] -> [Ni, Nt] cosine similarity in [-1, 1] (rows
        L2-normalised here, so any embeddings work). ``scale=True`` multiplies by :attr:`logit_scale`, the
        contrastive loss's logits: ``.softmax(-1)`` of a row is then the model's distribution over the texts."""
        if image_feats.dim() != 2 or text_feats.dim() != 2 or image_feats.shape[1] != text_feats.shape[1]:
            raise ValueError(f"similarity: expected [Ni, P] and [Nt, P], got {tuple(image_feats.shape)} and "
                             f"{tuple(text_feats.shape)}")
        norm = torch.nn.functional.normalize
        sim = norm(image_feats.float(), dim=-1) @ norm(text_feats.float(), dim=-1).T
        return sim * self.logit_scale if scale else sim

    @torch.no_grad()
    def match_score(self, images: ImageInput, texts: TextInput) -> Tensor:
        """ITM probability that each row-aligned (image, text) pair matches -> [B] float32 in [0, 1]; one pass.

        The ITM head is trained in stage 3 of the recipes: a stage 1/2 export carries an untrained head."""
        if not self.has_itm_head:
            raise ValueError(f"{self.source}: this export has no ITM head (written before ITM heads were exported)")
        x, ids, mask = self._pairs(images, texts)
        return self.model.match_logits(x, ids, mask).softmax(dim=-1)[:, 1]


def resolve_path(path: Union[str, os.PathLike]) -> tuple[str, Path]:
    """("export", the encoder.safetensors) or ("folder", a save_pretrained folder); one-line ValueError."""
    from momo_ds.model.hf_export import CONFIG, WEIGHTS

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / CONFIG).is_file() and (p / WEIGHTS).is_file():
            return "folder", p
        if (p / "encoder.safetensors").is_file():
            return "export", p / "encoder.safetensors"
        stages = sorted(p.glob("stage*/encoder.safetensors"), key=lambda s: (len(s.parent.name), s.parent.name))
        hint = f"; a run folder holds one per stage: pass {stages[-1].parent}" if stages else ""
        raise ValueError(f"{p}: no encoder.safetensors (a stage folder) nor {CONFIG} + {WEIGHTS} (a folder written "
                         f"by save_pretrained){hint}")
    if p.is_file():
        if p.name == WEIGHTS and (p.parent / CONFIG).is_file() and not p.with_suffix(".json").is_file():
            return "folder", p.parent
        return "export", p
    raise ValueError(f"{p}: no such file or folder (expected an encoder.safetensors, its stage folder, or a folder "
                     "written by save_pretrained)")


def _device(device: Union[str, torch.device]) -> torch.device:
    from momo_ds.eval.encoder import parse_device

    return parse_device(device)


def load_pretrained(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", *,
                    tokenizer: Union[None, str, os.PathLike, "Tokenizer"] = None, max_text_len: Optional[int] = None,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Pretrained:
    """Load ``<out>/stageN/encoder.safetensors``, its stage folder, or a ``save_pretrained`` folder.

    tokenizer: a Tokenizer, path or name overriding the recorded one; max_text_len: tokens kept per text (default
    as evaluation: min(128, model.max_text_len)); batch_size: images / texts per forward pass of ``*_features``.
    """
    from momo_ds.data import load_tokenizer
    from momo_ds.eval.encoder import load_encoder
    from momo_ds.eval.runner import text_max_len
    from momo_ds.model.hf_export import load_folder

    kind, where = resolve_path(path)
    dev = _device(device)
    enc = load_folder(where, dev) if kind == "folder" else load_encoder(where, dev)
    tok = tokenizer if hasattr(tokenizer, "encode_one") else tokenizer or enc.tokenizer
    if isinstance(tok, (str, os.PathLike)):
        tok = load_tokenizer(tok)  # DataError is a ValueError, one line
    if tok is not None and tok.vocab_size > enc.config.vocab_size:
        raise ValueError(f"tokenizer {tok.name} has {tok.vocab_size} tokens but the model {enc.config.vocab_size}")
    return Pretrained(enc, tok, where, text_max_len(enc, max_text_len), batch_size)
