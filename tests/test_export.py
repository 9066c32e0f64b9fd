"""Export: encoder-only weights, timm conversion (same CLS features), round trips."""
from __future__ import annotations

import pytest
import torch

from momo_ds.model import build_model, from_timm_state_dict, timm_model_for, to_timm_state_dict

torch.set_num_threads(1)


def test_export_is_encoder_only():
    model = build_model("tiny", depth=2, decoder_depth=1)
    exported = model.export_state_dict()
    assert not any(k.startswith(("decoders.", "lm_head.")) for k in exported)
    assert {"cls_token", "type_embed.weight", "text_embed.token_embed.weight", "text_embed.pos_embed.weight",
            "image_embed.patch_embed.proj.weight", "encoder.norm.weight", "encoder.blocks.1.mlp.fc2.bias",
            "image_proj.proj.weight", "text_proj.proj.weight", "logit_scale", "itm_head.weight",
            "itm_head.bias"} <= set(exported)
    bare = model.export_state_dict(heads=False)
    assert not any(k.startswith(("image_proj.", "text_proj.", "logit_scale", "itm_head.")) for k in bare)
    assert all(k in model.state_dict() for k in exported)
    assert set(to_timm_state_dict(exported, model.cfg)) == set(to_timm_state_dict(bare, model.cfg))


def test_an_export_written_before_the_itm_head_still_loads():
    src = build_model("tiny", depth=2, decoder_depth=1)
    old = {k: v for k, v in src.export_state_dict().items() if not k.startswith("itm_head.")}
    torch.manual_seed(123)
    dst = build_model("tiny", depth=2, decoder_depth=1)
    own_head = dst.itm_head.weight.clone()
    dst.load_exported(old)
    assert torch.equal(dst.itm_head.weight, own_head), "no head in the export: the model keeps its own"
    torch.testing.assert_close(dst.image_proj.proj.weight, src.image_proj.proj.weight)
    dst.load_exported(src.export_state_dict())
    assert torch.equal(dst.itm_head.weight, src.itm_head.weight)
    with pytest.raises(ValueError, match="missing .'itm_head.bias'"):
        dst.load_exported({k: v for k, v in src.export_state_dict().items() if k != "itm_head.bias"})


def test_export_roundtrip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    src = build_model("tiny", depth=2, decoder_depth=1)
    save_file({k: v.contiguous() for k, v in src.export_state_dict().items()}, str(tmp_path / "enc.safetensors"))
    torch.manual_seed(123)
    dst = build_model("tiny", depth=2, decoder_depth=1)
    dst.load_exported(load_file(str(tmp_path / "enc.safetensors")))
    assert dst.lm_head.weight is dst.text_embed.token_embed.weight
    images = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1, 512, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(dst.image_features(images), src.image_features(images))
        torch.testing.assert_close(dst.text_features(ids), src.text_features(ids))
    with pytest.raises(ValueError, match="missing"):
        dst.load_exported({k: v for k, v in src.export_state_dict().items() if k != "cls_token"})


def _check_timm_equivalence(model, timm_model, images: torch.Tensor) -> None:
    assert timm_model.global_pool == "token" and isinstance(timm_model.fc_norm, torch.nn.Identity)
    timm_model.load_state_dict(to_timm_state_dict(model.export_state_dict(), model.cfg), strict=True)
    timm_model.eval()
    model.eval()
    with torch.no_grad():
        ours = model.encode_image(images)
        theirs = timm_model.forward_features(images)
        pooled = timm_model(images)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ours[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, model.cls_features(images), atol=1e-5, rtol=1e-5)


def test_timm_tiny_gives_same_cls_features():
    from timm.models.vision_transformer import VisionTransformer

    model = build_model("tiny")
    with torch.no_grad():  # make the type embedding and CLS matter
        model.type_embed.weight.normal_()
    timm_model = VisionTransformer(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, num_classes=0)
    _check_timm_equivalence(model, timm_model, torch.randn(3, 3, 32, 32))
    assert sorted(timm_model_for("tiny").state_dict()) == sorted(timm_model.state_dict())


def test_timm_base_gives_same_cls_features():
    import timm

    model = build_model("base", decoders=[])
    timm_model = timm.create_model("vit_base_patch16_224", num_classes=0, pretrained=False)
    _check_timm_equivalence(model, timm_model, torch.randn(1, 3, 224, 224))


def test_from_timm_inverts_to_timm():
    model = build_model("tiny", depth=2, decoder_depth=1)
    with torch.no_grad():
        model.type_embed.weight.normal_()
    timm_state = to_timm_state_dict(model.export_state_dict(), model.cfg)
    back = from_timm_state_dict(timm_state, model.cfg, text_type=model.type_embed.weight[1])
    exported = model.export_state_dict()
    for k, v in back.items():
        torch.testing.assert_close(v, exported[k], atol=1e-6, rtol=0, msg=k)
    learned = dict(timm_state, pos_embed=torch.randn_like(timm_state["pos_embed"]))
    with pytest.raises(ValueError, match="sin-cos"):
        from_timm_state_dict(learned, model.cfg)


def test_every_weight_belongs_to_one_named_part():
    from momo_ds.model.parts import PARTS, load_parts, part_of, select

    model = build_model("tiny", depth=2, decoder_depth=1, decoders=["mim", "mlm", "cmm"])
    state = model.state_dict()
    assert {part_of(k) for k in state} == set(PARTS)
    assert "lm_head.weight" in state and "lm_head.weight" not in select(state, PARTS)  # tied: stored once
    dst = build_model("tiny", depth=2, decoder_depth=1, decoders=["mim", "mlm", "cmm"])
    load_parts(dst, state, required=PARTS)
    assert dst.lm_head.weight is dst.text_embed.token_embed.weight
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in state.items())
    half_head = {k: v for k, v in state.items() if k != "itm_head.bias"}
    with pytest.raises(ValueError, match=r"missing \['itm_head.bias'\]"):
        load_parts(dst, half_head, required=("encoder",), optional=("itm_head",), ignore=("contrastive", "lm_head",
                                                                                         "decoders"))
    with pytest.raises(ValueError, match=r"unexpected \['stray.weight'\]"):
        load_parts(dst, {**state, "stray.weight": torch.zeros(1)}, required=PARTS)
    with pytest.raises(ValueError, match="unexpected"):  # decoders not asked for and not ignored
        load_parts(dst, state, required=("encoder", "contrastive", "itm_head", "lm_head"))
