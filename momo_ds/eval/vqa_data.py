"""VQAv2 data in its official layout: questions, annotations, answer normalisation, vocabulary, soft scores, images.

Layout under one root folder (the official downloads unzipped side by side)::

    <root>/v2_OpenEnded_mscoco_<subtype>_questions.json   {"questions": [{"image_id", "question", "question_id"}],
                                                           "data_subtype": <subtype>, ...}
    <root>/v2_mscoco_<subtype>_annotations.json           {"annotations": [{"question_id", "image_id",
                                                           "multiple_choice_answer", "answers": [{"answer",
                                                           "answer_confidence", "answer_id"}] x 10,
                                                           "question_type", "answer_type"}], ...}
                                                           (absent for test-dev / test: predict, not score)
    <root>/<subtype>/COCO_<subtype>_<image_id:012d>.jpg    the COCO image folder

Images come from one of two places (``images`` of :func:`load_vqa_split`):

- an image folder with the COCO naming above (default ``<root>/<subtype>``; test-dev questions use the
  ``test2015`` images, as in the official download);
- webdataset shards (local, uncompressed ``.tar``, brace patterns allowed) whose sample ``__key__`` is the image id
  (``"9"`` or ``"000000000009"``) with a ``jpg``/``jpeg``/``png``/``webp`` member. The shards are indexed once
  (member offsets only); an image's bytes are read when it is needed.

Answers are normalised as the official VQA evaluation does (a compact version of its ``processPunctuation`` and
``processDigitArticle``): lower case, punctuation dropped, number words to digits, articles removed, common
contractions restored. Everything downstream (vocabulary, soft scores, the accuracy of
:func:`momo_ds.eval.vqa.vqa_accuracy`) sees normalised answers only.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import torch
from PIL import Image
from torch import Tensor

from momo_ds.data.decode import IMAGE_EXTS, decode_image
from momo_ds.data.errors import SampleError

DEFAULT_NUM_ANSWERS = 3129  # VLMo / ViLT / bottom-up attention's answer vocabulary size
QUESTIONS = "v2_OpenEnded_mscoco_{}_questions.json"  # file names under the root, .format(subtype)
ANNOTATIONS = "v2_mscoco_{}_annotations.json"

_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!]")  # the official list: ':' '&' '$' ... are kept
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")  # "1,000" -> "1000", not "1 000"
_PERIOD = re.compile(r"\.(?!\d)")  # a period not before a digit ("1.5" keeps its point)
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {w.replace("'", ""): w for w in (
    "aren't", "can't", "couldn't", "didn't", "doesn't", "don't", "hadn't", "hasn't", "haven't", "he's", "i'd",
    "i'm", "i've", "isn't", "it'd", "let's", "shouldn't", "that's", "there's", "they're", "wasn't", "we're",
    "weren't", "what's", "where's", "who's", "won't", "wouldn't", "you're")}


def normalize_answer(text: str) -> str:
    """'Two.' -> '2', 'A red, shiny ball!' -> 'red shiny ball', 'dont' -> "don't", '1,000' -> '1000'."""
    text = _DIGIT_COMMA.sub("", text.replace("\n", " ").replace("\t", " ").strip().lower())
    text = _PERIOD.sub("", _PUNCT.sub(" ", text))
    words = (_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


@dataclass(frozen=True)
class VqaQuestion:
    question_id: int
    image_id: int
    question: str
    answers: tuple[str, ...] = ()  # the human answers (10 in VQAv2), normalised; () without annotations
    majority: str = ""  # multiple_choice_answer, normalised
    answer_type: str = ""  # "yes/no" | "number" | "other"
    question_type: str = ""  # the question's prefix, e.g. "what color is the"


class ImageSource(Protocol):
    """Where a split's images are: ``missing(ids)`` -> the ids it has no image for; ``where(id)`` -> the file or
    shard member, for messages; ``load(id)`` -> the decoded RGB image (ValueError naming the file if it cannot)."""

    def missing(self, image_ids: Sequence[int]) -> list[int]: ...

    def where(self, image_id: int) -> str: ...

    def load(self, image_id: int) -> Image.Image: ...


def _decode(data: bytes, where: str) -> Image.Image:
    try:
        return decode_image(data)
    except SampleError as e:
        raise ValueError(f"{where}: cannot decode the image ({e})") from None


class ImageFolder:
    """``<folder>/COCO_<prefix>_<image_id:012d>.jpg`` (the COCO naming; ``prefix`` is the image subtype)."""

    def __init__(self, folder: Union[str, Path], prefix: str):
        self.folder, self.prefix = Path(folder), prefix

    def path(self, image_id: int) -> Path:
        return self.folder / f"COCO_{self.prefix}_{image_id:012d}.jpg"

    def missing(self, image_ids: Sequence[int]) -> list[int]:
        present = set(os.listdir(self.folder)) if self.folder.is_dir() else set()  # one listing, not N stats
        return [i for i in image_ids if self.path(i).name not in present]

    def where(self, image_id: int) -> str:
        return str(self.path(image_id))

    def load(self, image_id: int) -> Image.Image:
        try:
            data = self.path(image_id).read_bytes()
        except OSError as e:
            raise ValueError(f"{self.where(image_id)}: cannot read the image ({e.strerror})") from None
        return _decode(data, self.where(image_id))


_MEMBER = re.compile(r"^(?P<key>(?:.*/)?[^/.]+)\.(?P<ext>[^/]+)$")  # webdataset's key / extension split


class ShardImages:
    """Images of webdataset shards keyed by image id: an index of (shard, byte offset, size) per image."""

    def __init__(self, urls: Sequence[str]):
        self.index: dict[int, tuple[str, int, int]] = {}
        for url in urls:
            self._index_shard(url)

    def _index_shard(self, url: str) -> None:
        if not os.path.isfile(url):
            raise ValueError(f"VQA image shard not found: {url}")
        try:
            with tarfile.open(url, mode="r:") as tar:  # plain tar only: offsets must be offsets in the file
                members = [m for m in tar if m.isfile()]
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"{url}: not a readable uncompressed tar shard ({e})") from None
        for m in members:
            parts = _MEMBER.match(m.name)
            if parts is None or parts["ext"].lower() not in IMAGE_EXTS:
                continue
            key = parts["key"].rsplit("/", 1)[-1]
            if not (key.isascii() and key.isdigit()):
                continue  # not an image id: some other sample sharing the shards
            image_id = int(key)
            if image_id in self.index:
                raise ValueError(f"{url}: image id {image_id} is also in {self.index[image_id][0]}")
            self.index[image_id] = (url, m.offset_data, m.size)

    def missing(self, image_ids: Sequence[int]) -> list[int]:
        return [i for i in image_ids if i not in self.index]

    def where(self, image_id: int) -> str:
        url = self.index[image_id][0] if image_id in self.index else "the shards"
        return f"{url} (key {image_id})"

    def load(self, image_id: int) -> Image.Image:
        url, offset, size = self.index[image_id]
        with open(url, "rb") as f:
            f.seek(offset)
            return _decode(f.read(size), self.where(image_id))


@dataclass
class VqaSplit:
    """One subtype's questions (with their human answers when annotated) and where its images are."""

    subtype: str
    questions: list[VqaQuestion]
    images: ImageSource
    source: str  # the questions file, for messages

    @property
    def scored(self) -> bool:
        """Whether every question has human answers (test-dev / test files have none)."""
        return all(q.answers for q in self.questions)

    def __len__(self) -> int:
        return len(self.questions)


def _read_list(path: Path, key: str) -> list[dict]:
    """The ``key`` list of a VQA JSON file; one-line ValueError naming the file otherwise."""
    if not path.is_file():
        raise ValueError(f"VQA file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise ValueError(f"{path}: no {key!r} list of objects (not a VQA {key} file)")
    return items


def _field(path: Path, n: int, item: dict, name: str, kind: type):
    value = item.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{path}: entry {n} has no {kind.__name__} {name!r} (got {value!r})")
    return value


def _annotations(path: Path) -> dict[int, dict]:
    """question_id -> {answers, majority, answer_type, question_type}, answers normalised."""
    out = {}
    for n, a in enumerate(_read_list(path, "annotations")):
        qid = _field(path, n, a, "question_id", int)
        answers = a.get("answers")
        if not isinstance(answers, list) or not answers or not all(
                isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers):
            raise ValueError(f"{path}: entry {n} (question {qid}) has no 'answers' list of {{'answer': str}}")
        out[qid] = dict(answers=tuple(normalize_answer(x["answer"]) for x in answers),
                        majority=normalize_answer(str(a.get("multiple_choice_answer", ""))),
                        answer_type=str(a.get("answer_type", "")), question_type=str(a.get("question_type", "")))
    return out


def read_questions(root: Union[str, Path], subtype: str) -> list[VqaQuestion]:
    """The subtype's questions, with their annotations when the annotations file exists (else unscored)."""
    qpath, apath = Path(root) / QUESTIONS.format(subtype), Path(root) / ANNOTATIONS.format(subtype)
    items = _read_list(qpath, "questions")
    notes = _annotations(apath) if apath.is_file() else {}
    questions = []
    for n, q in enumerate(items):
        qid = _field(qpath, n, q, "question_id", int)
        if apath.is_file() and qid not in notes:
            raise ValueError(f"{apath}: no annotation for question {qid} of {qpath.name}")
        questions.append(VqaQuestion(qid, _field(qpath, n, q, "image_id", int),
                                     _field(qpath, n, q, "question", str), **notes.get(qid, {})))
    if not questions:
        raise ValueError(f"{qpath}: no questions")
    return questions


def image_subtype(subtype: str) -> str:
    """The COCO image folder a question subtype reads: test-dev questions are about test2015 images."""
    return "test2015" if subtype.startswith("test-dev") else subtype


def _image_source(root: Path, subtype: str, images) -> ImageSource:
    from momo_ds.data.shards import expand_urls

    if images is None:
        return ImageFolder(root / image_subtype(subtype), image_subtype(subtype))
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        return ImageFolder(images, image_subtype(subtype))
    urls = expand_urls([str(images)] if isinstance(images, (str, Path)) else [str(u) for u in images])
    if not urls:
        raise ValueError(f"VQA images: no shards in {images!r}")
    return ShardImages(urls)


def load_vqa_split(root: Union[str, Path], subtype: str,
                   images: Optional[Union[str, Path, Sequence[str]]] = None) -> VqaSplit:
    """Read ``subtype`` (e.g. ``train2014``, ``val2014``, ``test-dev2015``) from ``root``.

    images: None -> the COCO folder ``<root>/<image subtype>``; an existing folder -> that folder (COCO naming);
    otherwise shard URL(s) / brace pattern(s) keyed by image id. Every question's image must exist: ValueError
    naming the question file and the first missing image otherwise.
    """
    root = Path(root)
    qpath, questions = root / QUESTIONS.format(subtype), read_questions(root, subtype)
    source = _image_source(root, subtype, images)
    missing = source.missing(sorted({q.image_id for q in questions}))
    if missing:
        q = next(q for q in questions if q.image_id == missing[0])
        raise ValueError(f"{qpath}: question {q.question_id} needs image {q.image_id}, not found: "
                         f"{source.where(q.image_id)} ({len(missing)} image(s) missing)")
    return VqaSplit(subtype, questions, source, str(qpath))


def answer_vocab(questions: Sequence[VqaQuestion], max_answers: int = DEFAULT_NUM_ANSWERS) -> list[str]:
    """The ``max_answers`` most frequent normalised majority answers (``multiple_choice_answer``, as ViLT
    counts them) of annotated questions, most frequent first, ties alphabetical: index 0 is the majority
    baseline's answer."""
    counts = Counter(q.majority for q in questions if q.majority)
    if not counts:
        raise ValueError("answer vocabulary: no annotated question (the train split needs its annotations file)")
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_answers]]


def soft_scores(questions: Sequence[VqaQuestion], vocab: Sequence[str]) -> Tensor:
    """-> [N, A] float32 targets: min(1, humans who gave the answer / 3), 0 for answers outside ``vocab``."""
    index = {a: i for i, a in enumerate(vocab)}
    out = torch.zeros(len(questions), len(vocab))
    for row, q in enumerate(questions):
        for answer, count in Counter(q.answers).items():
            if answer in index:
                out[row, index[answer]] = min(1.0, count / 3.0)
    return out
