"""VQAv2: the official-layout reader, answer normalisation, vocabulary + soft scores, the VQA accuracy metric, the
head and loss, deterministic fine-tuning, shards vs image folder, and the built-in synthetic VQA set."""
import io
import json
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from momo_ds.data.synthetic_vqa import make_synthetic_vqa
from momo_ds.eval.vqa import (VqaHead, VqaModel, finetune_vqa, predict_vqa, results_json, score_vqa, set_image_size,
                              synthetic_vqa_splits, train_vqa, vqa_accuracy, vqa_loss)
from momo_ds.eval.vqa_data import VqaQuestion, answer_vocab, load_vqa_split, normalize_answer, soft_scores
from momo_ds.model import build_model


def _jpg(colour, size=16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG")
    return buf.getvalue()


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _official(root, subtype="train2014", annotated=True, image_folder=None):
    """A hand-written official-layout split: 3 questions on images 1 and 42."""
    questions = [{"image_id": 1, "question": "What color is it?", "question_id": 1000},
                 {"image_id": 1, "question": "How many?", "question_id": 1001},
                 {"image_id": 42, "question": "Is it red?", "question_id": 42000}]
    _write(root / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {"questions": questions, "data_subtype": subtype})
    answers = {1000: ["Red"] * 7 + ["red."] + ["blue"] * 2, 1001: ["two"] * 5 + ["2"] * 3 + ["3", "Three"],
               42000: ["yes"] * 10}
    types = {1000: "other", 1001: "number", 42000: "yes/no"}
    if annotated:
        notes = [{"question_id": q["question_id"], "image_id": q["image_id"],
                  "multiple_choice_answer": answers[q["question_id"]][0],
                  "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                              for i, a in enumerate(answers[q["question_id"]])],
                  "question_type": "what", "answer_type": types[q["question_id"]]} for q in questions]
        _write(root / f"v2_mscoco_{subtype}_annotations.json", {"annotations": notes})
    folder = root / (image_folder or subtype)
    folder.mkdir(exist_ok=True)
    for image_id, colour in ((1, (200, 0, 0)), (42, (0, 0, 200))):
        (folder / f"COCO_{folder.name}_{image_id:012d}.jpg").write_bytes(_jpg(colour))
    return root


def test_reader_reads_the_official_layout(tmp_path):
    split = load_vqa_split(_official(tmp_path), "train2014")
    assert split.scored and len(split) == 3 and [q.question_id for q in split.questions] == [1000, 1001, 42000]
    q = split.questions[1]
    assert (q.image_id, q.question, q.answer_type, q.majority) == (1, "How many?", "number", "2")
    assert q.answers == ("2",) * 8 + ("3", "3")  # normalised: "two" -> "2", "Three" -> "3"
    assert split.questions[0].answers == ("red",) * 8 + ("blue",) * 2
    image = split.images.load(42)
    assert image.mode == "RGB" and image.size == (16, 16) and image.getpixel((8, 8))[2] > 150


def test_unannotated_questions_are_predicted_not_scored(tmp_path):
    """test-dev questions have no annotations file, and their images are COCO's test2015 folder."""
    split = load_vqa_split(_official(tmp_path, "test-dev2015", annotated=False, image_folder="test2015"),
                           "test-dev2015")
    assert not split.scored and split.questions[0].answers == ()
    with pytest.raises(ValueError, match="has no annotations"):
        score_vqa(split, ["yes"] * 3, ["yes"])
    model = VqaModel(build_model("tiny", img_size=16, decoders=[]), 2).eval()
    preds = predict_vqa(model, _Chars(), split, ["yes", "no"], max_len=8)
    assert len(preds) == 3 and set(preds) <= {"yes", "no"}
    assert results_json(split, preds)[2] == {"question_id": 42000, "answer": preds[2]}


def _one_line_error(fn, *match):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(m in msg for m in match), msg
    return msg


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path):
    root = _official(tmp_path)
    qfile = root / "v2_OpenEnded_mscoco_train2014_questions.json"
    afile = root / "v2_mscoco_train2014_annotations.json"
    _one_line_error(lambda: load_vqa_split(root, "val2014"), "VQA file not found",
                    "v2_OpenEnded_mscoco_val2014_questions.json")
    good = qfile.read_text()
    _write(qfile, good[:-5])
    _one_line_error(lambda: load_vqa_split(root, "train2014"), str(qfile), "not valid JSON")
    _write(qfile, {"annotations": []})
    _one_line_error(lambda: load_vqa_split(root, "train2014"), str(qfile), "no 'questions' list")
    _write(qfile, {"questions": [{"image_id": 1, "question": "?"}]})
    _one_line_error(lambda: load_vqa_split(root, "train2014"), str(qfile), "'question_id'")
    _write(qfile, {"questions": [{"image_id": 1, "question": "why?", "question_id": 7}]})
    _one_line_error(lambda: load_vqa_split(root, "train2014"), str(afile), "no annotation for question 7")
    _write(qfile, good)
    _write(afile, {"annotations": [{"question_id": 1000, "answers": "red"}]})
    _one_line_error(lambda: load_vqa_split(root, "train2014"), str(afile), "no 'answers' list")
    afile.unlink()
    (root / "train2014" / "COCO_train2014_000000000042.jpg").unlink()
    _one_line_error(lambda: load_vqa_split(root, "train2014"), str(qfile), "question 42000 needs image 42",
                    "COCO_train2014_000000000042.jpg")
    (root / "train2014" / "COCO_train2014_000000000042.jpg").write_bytes(b"not a jpeg")
    split = load_vqa_split(root, "train2014")
    _one_line_error(lambda: split.images.load(42), "COCO_train2014_000000000042.jpg", "cannot decode")
    _one_line_error(lambda: load_vqa_split(root, "train2014", images=str(tmp_path / "none-{0..1}.tar")),
                    "VQA image shard not found", "none-0.tar")


def test_answer_normalisation():
    cases = {"Two.": "2", "  RED\n": "red", "A red, shiny ball!": "red shiny ball", "dont": "don't",
             "1,000": "1000", "1.5": "1.5", "t-shirt": "t shirt", "the dog's": "dog's", "None": "0",
             "Yes!": "yes", "an apple": "apple", "ten": "10"}
    assert {k: normalize_answer(k) for k in cases} == cases


def _q(answers, majority="", answer_type="other"):
    return VqaQuestion(0, 0, "q", tuple(answers), majority or answers[0], answer_type)


def test_vocabulary_and_soft_scores():
    qs = [_q(["b"] * 10), _q(["a"] * 10), _q(["b"] * 9 + ["c"]), _q(["c"] * 2 + ["a"] * 8, "a"), _q(["d"] * 10)]
    assert answer_vocab(qs) == ["a", "b", "d"]  # majority counts 2, 2, 1 ("c" is never the majority): ties alphabetical
    assert answer_vocab(qs, max_answers=2) == ["a", "b"]
    s = soft_scores([_q(["x"] * 5 + ["y"] * 2 + ["z"] + ["w"] * 2)], ["x", "y", "z", "v"])
    assert torch.allclose(s, torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0]]))  # "w" is outside the vocabulary
    with pytest.raises(ValueError, match="no annotated question"):
        answer_vocab([VqaQuestion(1, 1, "q")])


def _naive_accuracy(pred, answers):
    """The official evaluation's loop: leave each human out, min(1, matches among the others / 3), mean."""
    accs = [min(1.0, sum(a == pred for j, a in enumerate(answers) if j != i) / 3) for i in range(len(answers))]
    return sum(accs) / len(accs)


def test_vqa_accuracy_is_the_leave_one_out_official_metric():
    for m, want in ((0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)):
        answers = ["yes"] * m + ["no"] * (10 - m)
        assert vqa_accuracy("yes", answers) == pytest.approx(want) == pytest.approx(_naive_accuracy("yes", answers))
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice("abc") for _ in range(rng.randint(2, 10))]
        assert vqa_accuracy("a", answers) == pytest.approx(_naive_accuracy("a", answers))


def test_score_reports_model_majority_oracle_and_answer_types(tmp_path):
    split = load_vqa_split(_official(tmp_path), "train2014")
    vocab = ["yes", "red", "2"]
    r = score_vqa(split, ["red", "3", "yes"], vocab)
    assert r["vqa_score"] == pytest.approx(100 * (1.0 + 0.6 + 1.0) / 3)  # "3": 2 of 10 humans
    assert r["vqa_score/number"] == pytest.approx(60.0) and r["vqa_score/yes/no"] == 100.0
    assert r["majority_score"] == pytest.approx(100 / 3) and r["majority_score/other"] == 0.0
    assert r["oracle_score"] == 100.0


def test_tiny_recipe_is_the_default_and_bad_arguments_are_one_line_errors(synthetic):
    import inspect

    from momo_ds.eval.vqa import RECIPES

    defaults = {k: p.default for k, p in inspect.signature(finetune_vqa).parameters.items()}
    assert {k: defaults[k] for k in RECIPES["tiny"]} == RECIPES["tiny"]
    _, (train, val) = synthetic
    model = build_model("tiny", img_size=16, depth=1, decoders=[])
    _one_line_error(lambda: finetune_vqa(model, _Chars(), train, val, max_len=65), "max_len 65",
                    "max_text_len 64")
    _one_line_error(lambda: score_vqa(val, ["yes"], ["yes"]), "1 predictions for the 24 questions")


def test_head_shapes_and_loss_is_bce_times_answers():
    assert VqaHead(16, 7)(torch.randn(3, 16)).shape == (3, 7)
    model = VqaModel(build_model("tiny", img_size=16, decoders=[]), 5)
    logits = model(torch.randn(2, 3, 16, 16), torch.randint(5, 50, (2, 6)), torch.ones(2, 6, dtype=torch.bool))
    assert logits.shape == (2, 5) and logits.dtype == torch.float32
    x, t = torch.randn(4, 9), torch.rand(4, 9).round(decimals=1)
    p = torch.sigmoid(x)
    naive = -(t * p.log() + (1 - t) * (1 - p).log()).sum() / 4  # summed over answers, mean over the batch
    assert vqa_loss(x, t) == pytest.approx(float(naive), rel=1e-5)
    assert vqa_loss(x, t) == pytest.approx(float(F.binary_cross_entropy_with_logits(x, t) * 9), rel=1e-6)


def test_set_image_size_regrids_the_sincos_positions():
    from momo_ds.model.embeddings import sincos_2d

    model = build_model("tiny", decoders=[])
    set_image_size(model, 48)
    assert model.cfg.img_size == 48 and torch.equal(model.image_embed.pos_embed[0], sincos_2d(12, 128))
    assert model.encode_pair(torch.randn(1, 3, 48, 48), torch.tensor([[7, 8]]))[0].shape == (1, 1 + 144 + 2, 128)
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        set_image_size(model, 50)


class _Chars:
    """A stand-in tokenizer: one id per character (ids 5..68)."""

    pad_id = 0

    def encode(self, texts):
        return [[5 + ord(c) % 64 for c in t] for t in texts]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, synthetic_vqa_splits(root, image_size=16, num_train_images=24, num_val_images=8,
                                      questions_per_image=3)


def test_synthetic_set_is_official_layout_with_noise_and_variants(synthetic):
    root, (train, val) = synthetic
    info = make_synthetic_vqa(root / "vqa", image_size=16, num_train_images=24, num_val_images=8,
                              questions_per_image=3)
    manifest = (root / "vqa" / "manifest.json").stat().st_mtime_ns
    assert info.counts == {"train": {"images": 24, "questions": 72}, "val": {"images": 8, "questions": 24}}
    assert (root / "vqa" / "manifest.json").stat().st_mtime_ns == manifest, "reused, not rebuilt"
    assert len(train) == 72 and len(val) == 24 and train.scored and val.scored
    assert {q.answer_type for q in train.questions} == {"other", "number", "yes/no"}
    assert not {q.image_id for q in train.questions} & {q.image_id for q in val.questions}
    raw = json.loads((root / "vqa" / "v2_mscoco_train2014_annotations.json").read_text())["annotations"]
    surface = {a["answer"] for r in raw for a in r["answers"]}
    assert surface - {normalize_answer(a) for a in surface}, "some answers are written in another surface form"
    targets = soft_scores(train.questions, answer_vocab(train.questions))
    assert ((targets > 0) & (targets < 1)).any(), "some annotators disagree"
    assert all(q.answers.count(q.majority) >= 8 for q in train.questions)
    assert train.images.load(train.questions[0].image_id).size == (16, 16)


def test_finetuning_is_deterministic_and_keeps_the_callers_rng(synthetic):
    _, (train, val) = synthetic
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_model("tiny", img_size=16, depth=1, decoders=[])
        state = torch.get_rng_state()
        runs.append(finetune_vqa(model, _Chars(), train, val, epochs=1, batch_size=16, seed=3))
        assert torch.equal(torch.get_rng_state(), state)
    assert runs[0] == runs[1]
    assert {"vqa_score", "majority_score", "oracle_score", "vqa_score/yes/no", "vqa_score/number",
            "vqa_score/other", "train_loss", "train_n", "val_n", "answers"} <= set(runs[0])
    assert runs[0]["train_n"] == 72 and runs[0]["val_n"] == 24 and runs[0]["answers"] <= 16
    assert 0.0 <= runs[0]["vqa_score"] <= runs[0]["oracle_score"] <= 100.0  # oracle < 100: val answers unseen in train


def test_shards_and_image_folder_give_the_same_split(synthetic, tmp_path):
    import webdataset as wds

    root, (train, _) = synthetic
    folder = root / "vqa" / "train2014"
    files = sorted(folder.iterdir())
    with wds.ShardWriter(str(tmp_path / "img-%06d.tar"), maxcount=10, verbose=0, encoder=False) as sink:
        for n, path in enumerate(files):  # __key__ = the image id, plain or zero-padded as in COCO file names
            image_id = int(path.stem.rsplit("_", 1)[1])
            sink.write({"__key__": f"{image_id:012d}" if n % 2 else str(image_id), "jpg": path.read_bytes()})
    sharded = load_vqa_split(root / "vqa", "train2014", images=str(tmp_path / "img-{000000..000002}.tar"))
    assert sharded.questions == train.questions
    assert load_vqa_split(root / "vqa", "train2014", images=folder).questions == train.questions
    for q in train.questions[::5]:
        assert train.images.load(q.image_id).tobytes() == sharded.images.load(q.image_id).tobytes()
    model = VqaModel(build_model("tiny", img_size=16, depth=1, decoders=[]), 3).eval()
    vocab = ["yes", "no", "1"]
    assert predict_vqa(model, _Chars(), train, vocab, max_len=16) == \
        predict_vqa(model, _Chars(), sharded, vocab, max_len=16)
    missing = load_vqa_split  # an id outside the shards is reported like a missing file
    _one_line_error(lambda: missing(root / "vqa", "train2014", images=str(tmp_path / "img-000000.tar")),
                    "needs image", "not found: the shards")


def test_train_vqa_learns_a_trivial_question(synthetic):
    """The path really learns: the large shape's colour, asked once per image, from pixels alone."""
    _, (train, _) = synthetic
    model = build_model("tiny", img_size=16, depth=1, decoders=[])
    colour = [q for q in train.questions if q.question.startswith("what colour is the large")]
    sub = type(train)(train.subtype, colour, train.images, train.source)
    vocab = answer_vocab(colour)
    vqa, loss = train_vqa(model, _Chars(), sub, vocab, epochs=30, lr=1e-3, batch_size=8, max_len=16)
    r = score_vqa(sub, predict_vqa(vqa, _Chars(), sub, vocab, max_len=16), vocab)
    assert len(vocab) >= 3 and r["vqa_score"] > r["majority_score"] + 30, (loss, r)
