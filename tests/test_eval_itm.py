"""Held-out ITM: matches a naive per-pair reference, a rigged head scores as it must, negatives never come from
the positive's image, and tools/evaluate.py --task itm runs end to end (and refuses an export without the head)."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from momo_ds.data import build_eval_loader, load_tokenizer, make_synthetic
from momo_ds.data.fixtures import image_samples, random_sentence, train_test_tokenizer, write_samples
from momo_ds.engine.checkpoint import export_encoder
from momo_ds.eval.encoder import load_encoder
from momo_ds.eval.itm import collect_pairs, draw_negatives, evaluate_itm
from momo_ds.model import build_model
from tools.evaluate import main as evaluate_main

torch.set_num_threads(1)
CPU = torch.device("cpu")
SHARED = "red circle"  # a caption of image 0 and of image 1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), num=64, image_size=32, seed=3)  # 64 held-out pairs


def _spread(model):
    """A random-initialised encoder maps every input to nearly the same [CLS]: spread its weights so that ITM
    predictions vary and similarity argmaxes sit far from ties (the reference encodes pairs one by one)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _spread(build_model("tiny", decoders=[], depth=2))


@pytest.fixture(scope="module")
def batches(synthetic):
    tok = load_tokenizer(synthetic.tokenizer)
    return list(build_eval_loader([synthetic.shards["pair"]["val"]], "pair", tokenizer=tok, image_size=32,
                                  patch_size=4, batch_size=24, max_text_len=64))


def _rows(batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per row: its image [C, H, W] and its caption's real tokens [L_i]."""
    images = [x for b in batches for x in b.image.images]
    texts = [t[m] for b in batches for t, m in zip(b.text.full_ids, b.text.full_mask)]
    return images, texts


def _naive_valid(images, texts):
    """valid(i, j): the split holds no row with row i's pixels and row j's caption tokens."""
    n = len(images)
    same = [[torch.equal(images[i], images[k]) for k in range(n)] for i in range(n)]
    equal = [[torch.equal(texts[j], texts[k]) for k in range(n)] for j in range(n)]
    return lambda i, j: not any(same[i][k] and equal[j][k] for k in range(n))


def _naive_random(n: int, valid, seed: int) -> list[int]:
    """The documented draw, one row at a time: every pending row draws (in row order), the invalid redraw."""
    g = torch.Generator().manual_seed(seed)
    negative, pending = [None] * n, list(range(n))
    while pending:
        draws = torch.randint(n, (len(pending),), generator=g).tolist()
        for i, j in zip(pending, draws):
            negative[i] = j
        pending = [i for i, j in zip(pending, draws) if not valid(i, j)]
    return negative


def _pct(hits: list[bool]) -> float:
    return 100.0 * sum(hits) / len(hits)


@torch.no_grad()
def _naive_itm(model, batches, seed: int) -> tuple[dict[str, float], list[int], list[torch.Tensor]]:
    images, texts = _rows(batches)
    n = len(images)
    valid = _naive_valid(images, texts)
    img = [model.image_features(x[None])[0] for x in images]
    txt = [model.text_features(t[None])[0] for t in texts]
    hard = []
    for i in range(n):
        sims = {j: float(img[i] @ txt[j]) for j in range(n) if valid(i, j)}
        hard.append(max(sims, key=sims.get))
    rand = _naive_random(n, valid, seed)

    def says_match(i: int, j: int) -> bool:
        return int(model.match_logits(images[i][None], texts[j][None]).argmax()) == 1

    pos = _pct([says_match(i, i) for i in range(n)])
    rnd = _pct([not says_match(i, rand[i]) for i in range(n)])
    hrd = _pct([not says_match(i, hard[i]) for i in range(n)])
    metrics = {"itm_random_bacc_pct": (pos + rnd) / 2, "itm_hard_bacc_pct": (pos + hrd) / 2, "itm_pos_acc_pct": pos,
               "itm_random_neg_acc_pct": rnd, "itm_hard_neg_acc_pct": hrd, "pairs": float(n)}
    return metrics, rand, [texts[j] for j in hard]


@pytest.mark.parametrize("seed", [0, 5])
def test_matches_a_naive_per_pair_reference(model, batches, seed):
    want, want_random, want_hard_texts = _naive_itm(model, batches, seed)
    assert 5.0 < want["itm_pos_acc_pct"] < 95.0, "a head that says one thing everywhere tests little"
    assert evaluate_itm(model, batches, CPU, seed=seed, chunk=7) == want
    random_rows, hard_rows = draw_negatives(collect_pairs(model, batches, CPU), seed, chunk=7)
    assert random_rows.tolist() == want_random
    _, texts = _rows(batches)
    # compared by tokens: captions repeated across images tie exactly, and either row is the same negative
    assert all(torch.equal(texts[j], t) for j, t in zip(hard_rows.tolist(), want_hard_texts))


def test_a_head_that_always_says_match_scores_chance(model, batches):
    always = build_model("tiny", decoders=[], depth=2).eval()  # a copy: the shared fixture keeps its head
    always.load_state_dict(model.state_dict())
    with torch.no_grad():
        always.itm_head.weight.zero_()
        always.itm_head.bias.copy_(torch.tensor([0.0, 1.0]))
    r = evaluate_itm(always, batches, CPU)
    assert r == {"itm_random_bacc_pct": 50.0, "itm_hard_bacc_pct": 50.0, "itm_pos_acc_pct": 100.0,
                 "itm_random_neg_acc_pct": 0.0, "itm_hard_neg_acc_pct": 0.0, "pairs": 64.0}


class OwnCaptionsMostSimilar:
    """The model's ITM head, with contrastive embeddings rigged so that an image's own captions (the shared one
    included) are its most similar texts: the hard negative must still come from another image."""

    def __init__(self, model, images: list[torch.Tensor], captions: list[list[list[int]]]):
        self.model, self.cfg, self.images, self.captions = model, model.cfg, images, captions

    def image_features(self, images):
        return torch.stack([self._one_hot([k for k, x in enumerate(self.images) if torch.equal(x, y)])
                            for y in images])

    def text_features(self, ids, mask):
        return torch.stack([self._one_hot([k for k, c in enumerate(self.captions) if t[m].tolist() in c])
                            for t, m in zip(ids, mask)])

    def match_logits(self, *args):
        return self.model.match_logits(*args)

    def _one_hot(self, owners: list[int]) -> torch.Tensor:
        v = torch.zeros(len(self.images))
        v[owners] = 1.0
        return v / v.norm()


def test_negatives_never_come_from_the_same_image(tmp_path):
    tok = train_test_tokenizer(tmp_path / "tok.json")
    rng = random.Random(0)
    samples = image_samples(10, seed=1)
    captions = [[random_sentence(rng, 4 + k) for k in range(3)] for _ in samples]
    captions[0][1] = captions[1][2] = SHARED
    for s, c in zip(samples, captions):
        s["txt"] = "\n".join(c).encode()  # one pair sample, one caption per line, as tools/make_shards.py writes
    shards = write_samples(tmp_path / "pairs", samples, per_shard=4)
    batches = list(build_eval_loader(shards, "pair", tokenizer=tok, image_size=32, patch_size=4, batch_size=7,
                                     max_text_len=64))
    images, texts = _rows(batches)
    assert len(images) == 30 and sum(torch.equal(images[0], x) for x in images) == 3, "one row per caption"
    distinct = [x for k, x in enumerate(images) if not any(torch.equal(x, y) for y in images[:k])]
    token_captions = [[tok.encode_one(c) for c in cs] for cs in captions]
    rigged = OwnCaptionsMostSimilar(_spread(build_model("tiny", decoders=[], depth=2, vocab_size=tok.vocab_size)),
                                    distinct, token_captions)
    pairs = collect_pairs(rigged, batches, CPU)
    for seed in range(50):  # the 6 rows of images 0 and 1 each draw the other's shared caption 1 time in 27
        random_rows, hard_rows = draw_negatives(pairs, seed, chunk=4)
        for i, (r, h) in enumerate(zip(random_rows.tolist(), hard_rows.tolist())):
            own = next(cs for x, cs in zip(distinct, token_captions) if torch.equal(x, images[i]))
            for j in (r, h):
                assert not torch.equal(images[j], images[i]), (seed, i, j)
                assert texts[j].tolist() not in own, f"row {i}: a caption of its own image (the shared one)"
    assert evaluate_itm(rigged, batches, CPU)["pairs"] == 30.0


def test_one_image_with_every_caption_has_no_negatives(tmp_path):
    tok = train_test_tokenizer(tmp_path / "tok.json")
    sample = dict(image_samples(1)[0], txt=b"red circle\nblue square\nthe shape")
    batches = list(build_eval_loader(write_samples(tmp_path, [sample], 4), "pair", tokenizer=tok, image_size=32,
                                     patch_size=4, batch_size=4, max_text_len=64))
    net = build_model("tiny", decoders=[], depth=2, vocab_size=tok.vocab_size).eval()
    with pytest.raises(ValueError, match="no negative caption"):
        evaluate_itm(net, batches, CPU)


def test_a_one_shot_iterator_is_an_error_not_a_wrong_number(model, batches):
    with pytest.raises(ValueError, match="second pass"):
        evaluate_itm(model, iter(batches), CPU)


@pytest.fixture(scope="module")
def export(tmp_path_factory, model, synthetic):
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    export_encoder(model, path, {"stage": 3, "model": dataclasses.asdict(model.cfg), "tokenizer": synthetic.tokenizer})
    return path


def _err(capsys, argv) -> str:
    code = evaluate_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_evaluate_cli_runs_itm_on_an_export(tmp_path, capsys, export, synthetic, model, batches):
    out = tmp_path / "itm.json"
    argv = ["--encoder", str(export), "--task", "itm", "--pairs", synthetic.shards["pair"]["val"],
            "--batch_size", "24", "--device", "cpu", "--json", str(out)]
    assert evaluate_main(argv) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["itm"] == evaluate_itm(model, batches, CPU)
    assert "needs --pairs" in _err(capsys, ["--encoder", str(export), "--task", "itm"])


def test_an_export_without_itm_head_is_a_one_line_error(tmp_path, capsys, export, synthetic, model):
    old = tmp_path / "old" / "encoder.safetensors"  # as exports were written before they carried the ITM head
    old.parent.mkdir()
    save_file({k: v for k, v in load_file(str(export)).items() if not k.startswith("itm_head.")}, str(old))
    old.with_suffix(".json").write_text(export.with_suffix(".json").read_text())
    enc = load_encoder(old)
    assert not enc.has_itm_head and load_encoder(export).has_itm_head
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the rest of the export loads as before
        torch.testing.assert_close(enc.model.image_features(images), model.image_features(images))
    msg = _err(capsys, ["--encoder", str(old), "--task", "retrieval", "itm", "--pairs",
                        synthetic.shards["pair"]["val"], "--device", "cpu"])
    assert "this export has no ITM head (written before" in msg, msg
