"""Public API of a trained encoder (momo_ds.load_pretrained), the HF-style folder export and its timm tower.

Random-init tiny encoder, the synthetic dataset's tokenizer and pair shards: features must equal the evaluation
path bitwise, whichever way the encoder is loaded and whichever way images are given.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import tarfile
from typing import Optional

import pytest
import torch
from PIL import Image

import momo_ds
from momo_ds.data import load_tokenizer, make_synthetic
from momo_ds.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from momo_ds.engine.checkpoint import export_encoder
from momo_ds.model import build_model
from momo_ds.model.hf_export import save_pretrained, timm_create_kwargs

torch.set_num_threads(1)
HF_FILES = {"config.json", "model.safetensors", "timm_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "preprocessor_config.json"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), num=64, image_size=32, seed=3)


@pytest.fixture(scope="module")
def export(tmp_path_factory, synthetic):
    """<stage>/encoder.safetensors (+ .json + bundled tokenizer), written as the trainer writes it."""
    torch.manual_seed(0)
    model = build_model("tiny", decoders=[])
    with torch.no_grad():
        model.type_embed.weight.normal_()  # make the image type embedding (folded into timm's pos_embed) matter
    path = tmp_path_factory.mktemp("run") / "stage3" / "encoder.safetensors"
    export_encoder(model, path, {"stage": 3, "preset": "tiny", "model": dataclasses.asdict(model.cfg),
                                 "tokenizer": synthetic.tokenizer}, tokenizer=load_tokenizer(synthetic.tokenizer))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, export):
    return save_pretrained(export, tmp_path_factory.mktemp("hf") / "momo-tiny")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, synthetic):
    """(shard, [(image file, caption)] in shard order, one row per caption line as the eval loader makes them)."""
    shard = synthetic.shards["pair"]["val"].replace("{000000..000003}", "000000")
    out, rows = tmp_path_factory.mktemp("images"), []
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for name in sorted(n for n in members if n.endswith(".jpg")):
        (out / name).write_bytes(members[name])
        captions = members[name[:-3] + "txt"].decode().split("\n")
        rows += [(str(out / name), c.strip()) for c in captions if c.strip()]
    return shard, rows


def _one_line_error(fn, *args, match: Optional[str] = None, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as e:
        fn(*args, **kwargs)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    return str(e.value)


def test_features_equal_the_evaluation_path(export, pairs):
    from momo_ds.data import build_eval_loader
    from momo_ds.eval.encoder import load_encoder
    from momo_ds.eval.runner import text_max_len

    shard, rows = pairs
    enc = load_encoder(export)
    loader = build_eval_loader([shard], "pair", tokenizer=load_tokenizer(enc.tokenizer), image_size=32, patch_size=4,
                               batch_size=len(rows), max_text_len=text_max_len(enc))
    (batch,) = list(loader)
    with torch.no_grad():
        want_img = enc.model.image_features(batch.image.images)
        want_txt = enc.model.text_features(batch.text.full_ids, batch.text.full_mask)
    m = momo_ds.load_pretrained(export.parent)
    assert m.model.training is False and m.max_text_len == 64 and m.config == enc.config
    assert torch.equal(m.image_features([p for p, _ in rows]), want_img)
    assert torch.equal(m.text_features([c for _, c in rows]), want_txt)
    ids, mask = m.tokenize([c for _, c in rows])
    assert torch.equal(ids, batch.text.full_ids) and torch.equal(mask, batch.text.full_mask)
    assert m.tokenize("word " * 200)[0].shape == (1, 64), "truncated to the evaluation length"


def test_file_stage_folder_and_hf_folder_load_the_same(export, folder, pairs):
    images, texts = [p for p, _ in pairs[1][:5]], [c for _, c in pairs[1][:5]]
    loaded = [momo_ds.load_pretrained(p) for p in (export, export.parent, folder, folder / "model.safetensors")]
    want_img, want_txt = loaded[0].image_features(images), loaded[0].text_features(texts)
    for m in loaded[1:]:
        assert torch.equal(m.image_features(images), want_img) and torch.equal(m.text_features(texts), want_txt)
        assert torch.equal(m.match_score(images, texts), loaded[0].match_score(images, texts))
    assert loaded[2].tokenizer.name.endswith("tokenizer.json") and loaded[2].has_itm_head


def test_pil_path_and_tensor_inputs_agree(export, pairs, tmp_path):
    m = momo_ds.load_pretrained(export)
    paths = [p for p, _ in pairs[1][:4]]
    pil = [Image.open(p) for p in paths]
    want = m.image_features(paths)
    assert torch.equal(m.image_features(pil), want)
    assert torch.equal(m.image_features(torch.stack([m.transform(im) for im in pil])), want)
    assert torch.equal(m.image_features(torch.stack([m.transform.pixels(im) for im in pil])), want), "uint8"
    assert torch.equal(m.image_features(paths[0]), m.image_features(pil[0]))
    # another batch size gives the same rows up to float reassociation (bitwise only for the same batches)
    torch.testing.assert_close(m.image_features(paths[0]), want[:1], atol=1e-6, rtol=0)
    m.batch_size = 3  # several forward passes
    torch.testing.assert_close(m.image_features(paths), want, atol=1e-6, rtol=0)
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 128))  # not RGB: converted as shard images are
    rgba.save(tmp_path / "x.png")
    assert torch.equal(m.image_features(str(tmp_path / "x.png")), m.image_features(rgba))
    assert m.transform(rgba).shape == (3, 32, 32) and m.transform(rgba).dtype == torch.float32


def test_encodings_similarity_and_match_shapes(export, pairs):
    m = momo_ds.load_pretrained(export)
    images, texts = [p for p, _ in pairs[1][:3]], ["a red circle", "a small blue square above a green diamond"]
    assert m.encode_image(images).shape == (3, 1 + 64, 128)
    h, key_mask = m.encode_text(texts)
    length = int(m.tokenize(texts)[1].sum(1).max())
    assert h.shape == (2, 1 + length, 128) and key_mask.shape == (2, 1 + length) and key_mask[:, 0].all()
    h, key_mask = m.encode_pair(images[0], texts)  # one image, two texts: the image is repeated
    assert h.shape == (2, 1 + 64 + length, 128) and key_mask.shape == (2, 1 + 64 + length)
    assert torch.equal(m.cls_features(images), m.encode_image(images)[:, 0])
    img, txt = m.image_features(images), m.text_features(texts)
    assert img.shape == (3, 64) and txt.shape == (2, 64)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    sim = m.similarity(img, txt)
    assert sim.shape == (3, 2) and bool((sim.abs() <= 1 + 1e-6).all())
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    torch.testing.assert_close(m.similarity(img, txt, scale=True), sim * m.logit_scale)
    p = m.match_score(images[0], texts)
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all())
    _one_line_error(m.match_score, images[:2], texts + ["x"], match="2 images and 3 texts")


def test_hf_folder_files_and_values(export, folder):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from momo_ds.config import ModelConfig

    assert {f.name for f in folder.iterdir()} == HF_FILES
    assert not list(folder.parent.glob(".*")), "no temporary folder left behind"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "momo" and config["architectures"] == ["MoMo"]
    assert config["momo_ds_version"] == momo_ds.__version__ and config["decoders"] == []
    assert config["export"]["stage"] == 3 and config["has_itm_head"] is True
    fields = {f.name: config[f.name] for f in dataclasses.fields(ModelConfig)}
    exported = load_file(str(export))
    weights = load_file(str(folder / "model.safetensors"))
    assert weights.keys() == exported.keys() and all(torch.equal(v, exported[k]) for k, v in weights.items())
    build_model(ModelConfig(**fields)).load_state_dict(weights, strict=True)  # plain config + weights load
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == list(IMAGENET_MEAN) and pre["image_std"] == list(IMAGENET_STD)
    assert pre["size"] == {"shortest_edge": 37} and pre["crop_size"] == {"height": 32, "width": 32}  # round(32/.875)
    assert pre["resample"] == 3 and pre["rescale_factor"] == 1 / 255
    assert all(pre[k] for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"))
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert tok_cfg["model_max_length"] == 64 and special["pad_token"] == "[PAD]" and special["mask_token"] == "[MASK]"
    m = momo_ds.load_pretrained(folder)
    hf_ids = AutoTokenizer.from_pretrained(str(folder))("a small red circle")["input_ids"]
    assert hf_ids == m.tokenize("a small red circle")[0][0].tolist(), "no [CLS]/[SEP] added: MoMo adds its own"


def test_existing_destination_needs_overwrite(export, tmp_path):
    out = save_pretrained(export, tmp_path / "hf", timm=False)
    assert "timm" not in json.loads((out / "config.json").read_text()) and not (out / "timm_model.safetensors").exists()
    _one_line_error(save_pretrained, export, out, match="exists; pass overwrite=True")
    save_pretrained(export, out, overwrite=True)
    assert {f.name for f in out.iterdir()} == HF_FILES
    (tmp_path / "file").write_text("x")
    _one_line_error(save_pretrained, export, tmp_path / "file", overwrite=True, match="not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "hf"], "no temporary folder left behind"
    _one_line_error(timm_create_kwargs, save_pretrained(export, tmp_path / "bare", timm=False), match="no timm")


def test_timm_tower_loads_from_the_folder_without_network(folder, pairs, monkeypatch):
    import timm

    def no_network(*args, **kwargs):
        raise AssertionError("timm tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    kwargs = timm_create_kwargs(folder)
    assert kwargs["model_name"] == "vit_base_patch16_224" and kwargs["num_classes"] == 0
    vit = timm.create_model(**kwargs).eval()
    data_cfg = timm.data.resolve_data_config({}, model=vit)
    assert data_cfg["mean"] == IMAGENET_MEAN and data_cfg["std"] == IMAGENET_STD
    assert data_cfg["input_size"] == (3, 32, 32)
    m = momo_ds.load_pretrained(folder)
    image = Image.open(pairs[1][0][0]).resize((45, 32))  # odd sizes: the resize and crop are timm's own too
    x = timm.data.create_transform(**data_cfg)(image)[None]
    torch.testing.assert_close(x, m.transform(image)[None], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), m.encode_image(x)[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vit.forward_head(vit.forward_features(x)), m.cls_features(x), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_one_line_value_errors(export, folder, tmp_path, pairs):
    _one_line_error(momo_ds.load_pretrained, tmp_path / "nope", match="no such file or folder")
    _one_line_error(momo_ds.load_pretrained, tmp_path, match="no encoder.safetensors")
    _one_line_error(momo_ds.load_pretrained, export.parent.parent, match="pass .*stage3")  # a run folder
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    _one_line_error(momo_ds.load_pretrained, tmp_path / "junk.safetensors", match="config beside it")
    _one_line_error(momo_ds.load_pretrained, export, device="cuda:99" if torch.cuda.is_available() else "cuda")
    _one_line_error(momo_ds.load_pretrained, export, device="gpu", match="device 'gpu'")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "embed_dim": 64, "num_heads": 4}))
    _one_line_error(momo_ds.load_pretrained, bad, match="encoder/config mismatch")
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    _one_line_error(momo_ds.load_pretrained, bad, match="model_type is not 'momo'")
    m = momo_ds.load_pretrained(export)
    (tmp_path / "text.jpg").write_text("not an image")
    for images, match in [(3, "expected a PIL image"), ([], "empty"), ([3], r"images\[0\]"),
                          (str(tmp_path / "missing.jpg"), "cannot read"), (str(tmp_path / "text.jpg"), "cannot decode"),
                          (torch.zeros(1, 3, 16, 16), "image size"),
                          (torch.zeros(1, 3, 32, 32, dtype=torch.long), "uint8")]:
        _one_line_error(m.image_features, images, match=match)
    for texts, match in [("", "no tokens"), ([], "non-empty list"), ([1, 2], "list of strings"), (None, "a string")]:
        _one_line_error(m.text_features, texts, match=match)
    _one_line_error(m.similarity, torch.zeros(2, 64), torch.zeros(3, 32), match="expected")
    _one_line_error(save_pretrained, object(), tmp_path / "x", match="expected an export path")
    _one_line_error(save_pretrained, m.model, tmp_path / "x", match="pass tokenizer=")


def test_export_cli(export, tmp_path, capsys):
    from tools.export import main

    assert main(["--encoder", str(export), "--out", str(tmp_path / "hf")]) == 0
    assert {f.name for f in (tmp_path / "hf").iterdir()} == HF_FILES
    assert main(["--encoder", str(export.parent), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0]
    assert main(["--encoder", str(export.parent), "--out", str(tmp_path / "hf"), "--overwrite", "--no-timm"]) == 0
    assert not (tmp_path / "hf" / "timm_model.safetensors").exists()


def test_timm_name_and_kwargs_follow_the_config(tmp_path, synthetic, monkeypatch):
    """base -> vit_base_patch16_224 as is; a large-width model -> vit_large_patch16_224, whose default cfg loads
    .npz files with custom code: the overlay turns that off so our safetensors file loads."""
    import timm

    from momo_ds.config import model_preset
    from momo_ds.model.hf_export import timm_spec

    assert timm_spec(model_preset("base"))["model_name"] == "vit_base_patch16_224"
    assert timm_spec(model_preset("base"))["kwargs"] == {"num_classes": 0}
    assert timm_spec(model_preset("tiny", ln_eps=1e-5)) is None
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("timm tried to reach the network"))
    torch.manual_seed(0)
    model = build_model("large", depth=1, decoders=[], vocab_size=128, img_size=32)
    out = save_pretrained(model, tmp_path / "large", tokenizer=synthetic.tokenizer)
    kwargs = timm_create_kwargs(out)
    assert kwargs["model_name"] == "vit_large_patch16_224" and kwargs["depth"] == 1 and kwargs["img_size"] == 32
    vit = timm.create_model(**kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), momo_ds.load_pretrained(out).cls_features(x), atol=1e-5, rtol=1e-5)
