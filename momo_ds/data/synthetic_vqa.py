"""Built-in synthetic VQA set: questions about the pretraining set's shape scenes, in VQAv2's official layout.

The scenes are those of the pretraining pairs (:func:`momo_ds.data.synthetic.random_scene` + ``render``: one large
object in one of 4 colours, 0-2 small ones in one of 6), drawn from a seed stream of their own, so building this
set never changes the pretraining data and no VQA image is a pretraining image. Each image gets
``questions_per_image`` questions of different kinds, drawn among those that apply to it:

    other    what colour is the large shape? / what shape is the large object? / what colour is the small shape?
             / what shape is the small object? (the last two only with exactly one small object)
    number   how many small shapes are there? / how many objects are there? / how many <colour> shapes are there?
    yes/no   is there a small <colour> <shape>? / is there a <colour> shape? / is the large shape <colour>? /
             is the large shape a <shape>?  (yes about half of the time)

About 40 % of the questions are yes/no, 30 % number, 30 % other (VQAv2: 38 / 12 / 50): the yes/no share is
VQAv2's, and it is where a random-init encoder stays at the answer prior after one short epoch while a pretrained
joint encoder (image-text matching) already reads the scene.

Ten annotators answer every question. Most agree; on ``NOISY`` of the questions one or two of them give another
plausible answer of the same kind, so soft scores and the leave-one-out accuracy are not all 0/1, and a quarter of
the answers are written in another surface form ("Two", "a square.", "Yes!") that answer normalisation undoes.

Layout under ``out_dir`` (read by :func:`momo_ds.eval.vqa_data.load_vqa_split`)::

    v2_OpenEnded_mscoco_{train2014,val2014}_questions.json
    v2_mscoco_{train2014,val2014}_annotations.json
    {train2014,val2014}/COCO_<subtype>_<image_id:012d>.jpg
    manifest.json      parameters and counts; the set is reused when the parameters match
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from .rng import mix_seed
from .builds import build_dir_name, clean_stale_builds, publish_build, read_manifest, write_manifest
from .synthetic import COLOURS, MAIN_COLOURS, SHAPES, Scene, _jpeg, random_scene, render

VERSION = 1
SUBTYPES = {"train": "train2014", "val": "val2014"}
VAL_ID_OFFSET = 1_000_000  # val image ids never collide with train ones (as COCO's splits do not)
NOISY = 0.4  # share of questions on which one or two annotators disagree
VARIANT = 0.25  # share of answers written in another surface form
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # canonical (already normalised) form
    answer_type: str  # "other" | "number" | "yes/no"
    question_type: str
    choices: tuple[str, ...]  # the answers a careless annotator may give instead


def _main_colour(s: Scene, rng: random.Random) -> Optional[QA]:
    return QA("what colour is the large shape?", s.objects[0].colour, "other", "what colour is the",
              tuple(MAIN_COLOURS))


def _main_shape(s: Scene, rng: random.Random) -> Optional[QA]:
    return QA("what shape is the large object?", s.objects[0].shape, "other", "what shape is the", SHAPES)


def _small_colour(s: Scene, rng: random.Random) -> Optional[QA]:
    if len(s.objects) != 2:  # "the small shape" must name one object
        return None
    return QA("what colour is the small shape?", s.objects[1].colour, "other", "what colour is the", tuple(COLOURS))


def _small_shape(s: Scene, rng: random.Random) -> Optional[QA]:
    if len(s.objects) != 2:
        return None
    return QA("what shape is the small object?", s.objects[1].shape, "other", "what shape is the", SHAPES)


def _count_small(s: Scene, rng: random.Random) -> Optional[QA]:
    return QA("how many small shapes are there?", str(len(s.objects) - 1), "number", "how many", ("0", "1", "2"))


def _count_all(s: Scene, rng: random.Random) -> Optional[QA]:
    return QA("how many objects are there?", str(len(s.objects)), "number", "how many", ("1", "2", "3"))


def _count_colour(s: Scene, rng: random.Random) -> Optional[QA]:
    # half of the time a colour the scene has, so that the answer is not almost always 0
    colour = rng.choice([o.colour for o in s.objects] if rng.random() < 0.5 else list(COLOURS))
    n = sum(o.colour == colour for o in s.objects)
    return QA(f"how many {colour} shapes are there?", str(n), "number", "how many", ("0", "1", "2", "3"))


def _is_there(s: Scene, rng: random.Random) -> Optional[QA]:
    present = {(o.colour, o.shape) for o in s.objects[1:]}
    if present and rng.random() < 0.5:
        colour, shape = rng.choice(sorted(present))
    else:
        absent = [(c, sh) for c in COLOURS for sh in SHAPES if (c, sh) not in present]
        colour, shape = rng.choice(absent)
    answer = "yes" if (colour, shape) in present else "no"
    return QA(f"is there a small {colour} {shape}?", answer, "yes/no", "is there a", ("yes", "no"))


def _is_main_colour(s: Scene, rng: random.Random) -> Optional[QA]:
    main = s.objects[0].colour
    colour = main if rng.random() < 0.5 else rng.choice([c for c in MAIN_COLOURS if c != main])
    return QA(f"is the large shape {colour}?", "yes" if colour == main else "no", "yes/no", "is the", ("yes", "no"))


def _is_there_colour(s: Scene, rng: random.Random) -> Optional[QA]:
    present = {o.colour for o in s.objects}
    colour = rng.choice(sorted(present) if rng.random() < 0.5 else list(COLOURS))
    return QA(f"is there a {colour} shape?", "yes" if colour in present else "no", "yes/no", "is there a",
              ("yes", "no"))


def _is_main_shape(s: Scene, rng: random.Random) -> Optional[QA]:
    main = s.objects[0].shape
    shape = main if rng.random() < 0.5 else rng.choice([x for x in SHAPES if x != main])
    return QA(f"is the large shape a {shape}?", "yes" if shape == main else "no", "yes/no", "is the", ("yes", "no"))


TEMPLATES: tuple[Callable[[Scene, random.Random], Optional[QA]], ...] = (
    _main_colour, _main_shape, _small_colour, _small_shape, _count_small, _count_all, _count_colour, _is_there,
    _is_main_colour, _is_there_colour, _is_main_shape)


def _surface(answer: str, rng: random.Random) -> str:
    """The same answer as a person might type it: 'Two', '2.', 'a square', 'Yes!'."""
    if rng.random() >= VARIANT:
        return answer
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS) and rng.random() < 0.6:
        return rng.choice([NUMBER_WORDS[int(answer)], NUMBER_WORDS[int(answer)].capitalize()])
    if answer in SHAPES and rng.random() < 0.5:
        return f"a {answer}"
    return rng.choice([answer.capitalize(), answer + ".", answer + "!", answer.upper()])


def _annotators(qa: QA, rng: random.Random) -> list[dict]:
    """Ten human answers: the truth, except for one or two careless annotators on NOISY of the questions."""
    wrong = rng.choice((1, 1, 2)) if rng.random() < NOISY else 0
    others = [c for c in qa.choices if c != qa.answer]
    careless = set(rng.sample(range(10), wrong))
    answers = [(rng.choice(others), "maybe") if i in careless else (qa.answer, "yes") for i in range(10)]
    return [{"answer": _surface(a, rng), "answer_confidence": conf, "answer_id": i + 1}
            for i, (a, conf) in enumerate(answers)]


def _image_questions(scene: Scene, image_id: int, per_image: int, rng: random.Random) -> list[tuple[dict, dict]]:
    """(question entry, annotation entry) pairs of one image, ``per_image`` different kinds."""
    kinds = [qa for qa in (t(scene, rng) for t in TEMPLATES) if qa is not None]
    out = []
    for k, qa in enumerate(rng.sample(kinds, min(per_image, len(kinds)))):
        qid = image_id * 1000 + k
        out.append(({"image_id": image_id, "question": qa.question, "question_id": qid},
                    {"question_id": qid, "image_id": image_id, "multiple_choice_answer": qa.answer,
                     "answers": _annotators(qa, rng), "question_type": qa.question_type,
                     "answer_type": qa.answer_type}))
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _write_subtype(tmp: Path, subtype: str, n_images: int, id_offset: int, params: dict) -> int:
    """Images and the two JSON files of one subtype under ``tmp``; -> the number of questions."""
    rng = random.Random(mix_seed(params["seed"], "synthetic-vqa", subtype))
    (tmp / subtype).mkdir(parents=True)
    questions, annotations = [], []
    for i in range(n_images):
        image_id = id_offset + i + 1
        scene = random_scene(rng)
        image = render(scene, params["image_size"], rng)
        (tmp / subtype / f"COCO_{subtype}_{image_id:012d}.jpg").write_bytes(_jpeg(image))
        for q, a in _image_questions(scene, image_id, params["questions_per_image"], rng):
            questions.append(q)
            annotations.append(a)
    common = {"info": {"description": "momo-ds synthetic VQA"}, "license": {"name": "generated"},
              "data_subtype": subtype}
    _write_json(tmp / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
                {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions})
    _write_json(tmp / f"v2_mscoco_{subtype}_annotations.json", {**common, "annotations": annotations})
    return len(questions)


@dataclass
class SyntheticVqaInfo:
    root: str
    subtypes: dict[str, str]  # "train" / "val" -> the subtype name (train2014 / val2014)
    counts: dict[str, dict[str, int]]  # "train" / "val" -> {"images": n, "questions": n}


def make_synthetic_vqa(out_dir: Union[str, Path], image_size: int = 32, num_train_images: int = 500,
                       num_val_images: int = 250, questions_per_image: int = 6, seed: int = 0) -> SyntheticVqaInfo:
    """Generate (or reuse, when manifest.json has the same parameters) the synthetic VQA set under ``out_dir``
    (e.g. ``<run>/data/vqa``).

    The defaults (3000 train questions on 500 images, 1500 val questions on 250) are the calibrated tiny set: few
    images with many questions each, so that what the encoder brings matters (a random-init encoder does not learn
    the scenes from 500 images in one short epoch; a pretrained one already reads them). Built in a private
    directory whose files are then moved into place, so a killed or concurrent build never leaves a half-written
    set behind a valid manifest.
    """
    root = Path(out_dir).expanduser().resolve()
    params = {"version": VERSION, "image_size": int(image_size), "num_train_images": int(num_train_images),
              "num_val_images": int(num_val_images), "questions_per_image": int(questions_per_image),
              "seed": int(seed)}
    clean_stale_builds(root)
    cached = _load(root, params)
    if cached is not None:
        return cached
    if min(num_train_images, num_val_images, questions_per_image) < 1 or image_size < 8:
        raise ValueError(f"make_synthetic_vqa: need >= 1 image per split and question per image, image_size >= 8 "
                         f"(got {num_train_images}, {num_val_images}, {questions_per_image}, {image_size})")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / build_dir_name()
    try:
        counts = {}
        for split, n, offset in (("train", num_train_images, 0), ("val", num_val_images, VAL_ID_OFFSET)):
            counts[split] = {"images": n, "questions": _write_subtype(tmp, SUBTYPES[split], n, offset, params)}
        publish_build(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"params": params, "subtypes": SUBTYPES, "counts": counts}
    write_manifest(root, manifest)
    info = _load(root, params)
    assert info is not None
    return info


def _load(root: Path, params: dict) -> Optional[SyntheticVqaInfo]:
    m = read_manifest(root, params)
    if m is None:
        return None
    for subtype in m["subtypes"].values():
        files = (f"v2_OpenEnded_mscoco_{subtype}_questions.json", f"v2_mscoco_{subtype}_annotations.json")
        if not all((root / f).is_file() for f in files) or not (root / subtype).is_dir():
            return None
    return SyntheticVqaInfo(root=str(root), subtypes=dict(m["subtypes"]), counts=m["counts"])
